"""DPoP proof ids already used, shared by every copy of the service: a proof is accepted
once, whichever copy it reaches (RFC 9449 section 11.1).

The store is the one that holds the rate limits: Redis when REDIS_URL is set (`SET NX` with
an expiry, one round trip), else Postgres (`dpop_proofs`, migrations/0014_dpop.sql). In
Postgres every accepted proof is a row written before the request is served, so
concurrent requests share one statement and one commit (group commit, as the audit log's
reads do, app/audit/batcher.py): with one request at a time it writes at once. Rows are
kept until the proof's `iat` is too old for any copy to accept it, then purged.

A store that cannot answer refuses the request (503): a proof whose novelty cannot be
checked is not accepted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import asyncpg
from databases import Database

from app.core.db import connection
from app.core.errors import DATABASE_OUTAGES, DatabaseUnavailable, UpstreamUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

# The keys go in sorted, so two copies inserting the same keys lock them in one order. A key
# that is already there counts as new again only once its row has expired (a purge not run
# yet); then the row is renewed.
REMEMBER = """
INSERT INTO dpop_proofs AS p (key, expires_at)
SELECT k, to_timestamp(u) FROM unnest($1::bytea[], $2::float8[]) AS t(k, u) ORDER BY k
ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE p.expires_at <= now()
RETURNING p.key
"""
PURGE_EXPIRED = "DELETE FROM dpop_proofs WHERE expires_at <= now()"
REDIS_PREFIX = "bff:dpop:"


class ReplayStore(Protocol):
    async def first_use(self, key: bytes, until: float) -> bool:
        """True when `key` was never seen (and is now remembered until `until`, unix
        seconds); False when it was. Raises a 503 error when the store cannot answer."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Waiting:
    key: bytes
    until: float
    done: asyncio.Future[bool]


class PostgresReplays:
    """`dpop_proofs` through the app's pool, concurrent requests' keys in one statement.

    `max_batch` bounds one statement; `max_in_flight` statements run at once (one commits
    while the next batch forms)."""

    def __init__(self, database: Database, *, max_batch: int = 1000, max_in_flight: int = 2):
        self._database = database
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[_Waiting] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.statements = 0  # for tests and the benchmark

    async def first_use(self, key: bytes, until: float) -> bool:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(key, until, done))
        if len(self._tasks) < self._max_in_flight:
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a request that goes away leaves its key to be written with the rest.
        return await asyncio.shield(done)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            await self._write(batch)

    async def _write(self, batch: list[_Waiting]) -> None:
        first: dict[bytes, _Waiting] = {}
        for waiting in batch:  # the same key twice in one batch: the later one is a replay
            if waiting.key in first:
                waiting.done.set_result(False)
            else:
                first[waiting.key] = waiting
        try:
            async with connection(self._database) as conn:
                rows = await conn.fetch(
                    REMEMBER, list(first), [w.until for w in first.values()], timeout=5
                )
            self.statements += 1
        except Exception as exc:
            outage = isinstance(exc, DATABASE_OUTAGES)
            if not outage:
                logger.error("remembering DPoP proofs failed (%s)", type(exc).__name__)
            for waiting in first.values():
                if not waiting.done.done():
                    waiting.done.set_exception(
                        DatabaseUnavailable(f"the DPoP replay check failed: {type(exc).__name__}")
                    )
            return
        new = {bytes(row["key"]) for row in rows}
        for key, waiting in first.items():
            if not waiting.done.done():
                waiting.done.set_result(key in new)

    async def aclose(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def purge_expired(conn: asyncpg.Connection) -> None:
    """Forget proof ids no copy would accept any more (a periodic purge)."""
    await conn.execute(PURGE_EXPIRED, timeout=30)


class RedisReplays:
    """The same in Redis: one `SET key 1 NX PXAT until` per proof; Redis expires them."""

    def __init__(self, client: Redis) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 2.0) -> RedisReplays:
        from redis.asyncio import Redis

        return cls(Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout))

    async def first_use(self, key: bytes, until: float) -> bool:
        from redis.exceptions import RedisError

        try:
            stored = await self.client.set(
                REDIS_PREFIX.encode() + key.hex().encode(), b"1", nx=True, pxat=int(until * 1000)
            )
        except (RedisError, OSError) as exc:
            logger.warning("the DPoP replay check failed (%s)", type(exc).__name__)
            raise UpstreamUnavailable("the DPoP replay check is unavailable") from None
        return bool(stored)

    async def aclose(self) -> None:
        await self.client.aclose()


def replay_store(database: Database, redis_url: str | None) -> ReplayStore:
    """Redis when REDIS_URL is set and the `redis` package is there (as the rate limits
    choose), else Postgres."""
    if redis_url:
        try:
            return RedisReplays.from_url(redis_url)
        except ImportError:
            logger.warning(
                "REDIS_URL is set but the redis package is not installed; "
                "remembering DPoP proofs in Postgres"
            )
    return PostgresReplays(database)
