"""DPoP proof ids already used, shared by every copy of the service: a proof is accepted
once, whichever copy it reaches (RFC 9449 section 11.1).

The store is the one that holds the rate limits: Redis when REDIS_URL is set (`SET NX` with
an expiry), else Postgres (`dpop_proofs`, migrations/0014_dpop.sql). Every accepted proof is
written before the request is served, and concurrent requests share one write: one
statement and one commit in Postgres (group commit, as the audit log's reads do,
app/audit/batcher.py), one pipeline in Redis; with one request at a time it writes at once. Rows are
kept until the proof's `iat` is too old for any copy to accept it, then purged.

A store that cannot answer refuses the request (503): a proof whose novelty cannot be
checked is not accepted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import asyncpg
from databases import Database

from app.core.db import connection
from app.core.errors import DATABASE_OUTAGES, DatabaseUnavailable, UpstreamUnavailable
from app.core.groupcommit import Batches, Waiting

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
_REDIS_PREFIX = REDIS_PREFIX.encode()


class ReplayStore(Protocol):
    async def first_use(self, key: bytes, until: float) -> bool:
        """True when `key` was never seen (and is now remembered until `until`, unix
        seconds); False when it was. Raises a 503 error when the store cannot answer."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Key:
    key: bytes
    until: float


_Waiting = Waiting[_Key, bool]


class _Batched(Batches[_Key, bool]):
    """Concurrent requests' keys written together (app/core/groupcommit.py's queue: one
    write goes to the store while the next batch forms; alone, a key is written at once).
    `_write` answers every key of its batch."""

    def __init__(self, *, max_batch: int, max_in_flight: int) -> None:
        super().__init__(max_size=max_batch, max_in_flight=max_in_flight)
        self.statements = 0  # writes sent, for tests and the benchmark

    async def first_use(self, key: bytes, until: float) -> bool:
        return await self.submit(_Key(key, until))


class PostgresReplays(_Batched):
    """`dpop_proofs` through the app's pool, concurrent requests' keys in one statement
    (`max_batch` bounds one statement; `max_in_flight` statements run at once)."""

    def __init__(self, database: Database, *, max_batch: int = 1000, max_in_flight: int = 2):
        super().__init__(max_batch=max_batch, max_in_flight=max_in_flight)
        self._database = database

    async def _write(self, batch: list[_Waiting]) -> None:
        first: dict[bytes, _Waiting] = {}
        for waiting in batch:  # the same key twice in one batch: the later one is a replay
            if waiting.item.key in first:
                if not waiting.done.done():
                    waiting.done.set_result(False)
            else:
                first[waiting.item.key] = waiting
        try:
            async with connection(self._database) as conn:
                rows = await conn.fetch(
                    REMEMBER, list(first), [w.item.until for w in first.values()], timeout=5
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


async def purge_expired(conn: asyncpg.Connection) -> None:
    """Forget proof ids no copy would accept any more (a periodic purge)."""
    await conn.execute(PURGE_EXPIRED, timeout=30)


class RedisReplays(_Batched):
    """The same in Redis: one `SET key 1 NX PXAT until` per proof, Redis expiring them;
    concurrent requests' commands go in one pipeline (one round trip, and about a fifth of
    redis-py's CPU per command once eight share it). Within a pipeline Redis runs the
    commands in order, so the same key twice is new only the first time."""

    def __init__(self, client: Redis, *, max_batch: int = 1000, max_in_flight: int = 2) -> None:
        super().__init__(max_batch=max_batch, max_in_flight=max_in_flight)
        self.client = client

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 2.0) -> RedisReplays:
        from redis.asyncio import Redis

        return cls(Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout))

    async def _write(self, batch: list[_Waiting]) -> None:
        from redis.exceptions import RedisError

        try:
            if len(batch) == 1:  # alone: a pipeline would only add its own cost
                [waiting] = batch
                key, expiry = _redis_key(waiting)
                stored = [await self.client.set(key, b"1", nx=True, pxat=expiry)]
            else:
                pipeline = self.client.pipeline(transaction=False)
                for waiting in batch:
                    key, expiry = _redis_key(waiting)
                    pipeline.set(key, b"1", nx=True, pxat=expiry)
                stored = await pipeline.execute()
            self.statements += 1
        except Exception as exc:  # every waiting request gets its answer, if only a 503
            if isinstance(exc, RedisError | OSError):
                logger.warning("the DPoP replay check failed (%s)", type(exc).__name__)
            else:
                logger.error("remembering DPoP proofs failed (%s)", type(exc).__name__)
            for waiting in batch:
                if not waiting.done.done():
                    waiting.done.set_exception(
                        UpstreamUnavailable("the DPoP replay check is unavailable")
                    )
            return
        for waiting, answer in zip(batch, stored, strict=True):
            if not waiting.done.done():
                waiting.done.set_result(bool(answer))

    async def aclose(self) -> None:
        await super().aclose()
        await self.client.aclose()


def _redis_key(waiting: _Waiting) -> tuple[bytes, int]:
    """The key's name in Redis and its expiry (unix milliseconds)."""
    item = waiting.item
    return _REDIS_PREFIX + item.key.hex().encode(), int(item.until * 1000)


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
