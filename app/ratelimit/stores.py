"""Where the copies' counts meet: Postgres (`rate_counters`, migration 0006) or Redis."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import asyncpg

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Row(NamedTuple):
    """One counter to add to (`add` > 0) or only read (`add` == 0) in a sync."""

    key: str
    window_start_ms: int
    expires_ms: int
    add: int


class CounterStore(Protocol):
    """Where the copies' counts meet: Postgres or Redis."""

    async def add_and_read(self, rows: Sequence[Row]) -> list[int]:
        """Add each row's `add` to its counter; return every row's total after that."""
        ...

    async def purge(self) -> int:
        """Delete expired counters; return how many (0 where the store expires them)."""
        ...

    async def aclose(self) -> None: ...


# --- Postgres ---------------------------------------------------------------------------

# One round trip per sync: the adds, then the totals of the counters only read. Rows are
# locked in (key, window) order, so two copies flushing the same keys cannot deadlock.
# Totals of counters added to come from RETURNING, which sees other copies' committed adds
# (the upsert waits for their row lock) where the statement's snapshot would not. No join
# against the CTE: its row count is unknown to the planner, which then picks a nested loop
# (seconds for 10k keys instead of milliseconds).
ADD_AND_READ = """
WITH added AS (
    INSERT INTO rate_counters AS c (key, window_start, expires_at, count)
    SELECT a.key,
           'epoch'::timestamptz + a.start_ms * interval '1 millisecond',
           'epoch'::timestamptz + a.expires_ms * interval '1 millisecond',
           a.add
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
        AS a(key, start_ms, expires_ms, add)
    ORDER BY 1, 2
    ON CONFLICT (key, window_start) DO UPDATE SET count = c.count + EXCLUDED.count
    RETURNING c.key, c.window_start, c.count
)
SELECT key, (extract(epoch FROM window_start) * 1000)::bigint AS start_ms, count FROM added
UNION ALL
SELECT c.key, r.start_ms, c.count
FROM unnest($5::text[], $6::bigint[]) AS r(key, start_ms)
JOIN rate_counters c ON c.key = r.key
    AND c.window_start = 'epoch'::timestamptz + r.start_ms * interval '1 millisecond'
"""
PURGE_EXPIRED = "DELETE FROM rate_counters WHERE expires_at < now()"


class PostgresCounters:
    """The `rate_counters` table through the app's asyncpg pool (one connection per sync)."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], *, timeout: float = 5.0) -> None:
        self._pool = pool
        self.timeout = timeout

    async def add_and_read(self, rows: Sequence[Row]) -> list[int]:
        adds = [r for r in rows if r.add]
        reads = [r for r in rows if not r.add]
        async with self._pool().acquire(timeout=self.timeout) as conn:
            records = await conn.fetch(
                ADD_AND_READ,
                [r.key for r in adds],
                [r.window_start_ms for r in adds],
                [r.expires_ms for r in adds],
                [r.add for r in adds],
                [r.key for r in reads],
                [r.window_start_ms for r in reads],
                timeout=self.timeout,
            )
        totals = {(r["key"], r["start_ms"]): r["count"] for r in records}
        return [totals.get((r.key, r.window_start_ms), 0) for r in rows]

    async def purge(self) -> int:
        async with self._pool().acquire(timeout=self.timeout) as conn:
            status: str = await conn.execute(PURGE_EXPIRED, timeout=30)
        return int(status.rsplit(" ", 1)[-1])

    async def aclose(self) -> None:
        """The pool belongs to the app."""


# --- Redis (optional: `pip install redis`, then REDIS_URL) --------------------------------


class RedisCounters:
    """The same counters in Redis: one pipeline of INCRBY + PEXPIREAT (or GET) per sync.
    Redis expires old windows itself, so `purge` has nothing to do."""

    def __init__(self, client: Redis, *, prefix: str = "bff:rl:") -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 5.0) -> RedisCounters:
        from redis.asyncio import Redis

        client = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(client)

    async def add_and_read(self, rows: Sequence[Row]) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for row in rows:
            name = f"{self.prefix}{row.key}:{row.window_start_ms}"
            if row.add:
                pipe.incrby(name, row.add)
                pipe.pexpireat(name, row.expires_ms)
            else:
                pipe.get(name)
        results: list[Any] = await pipe.execute()
        totals: list[int] = []
        position = 0
        for row in rows:
            value = results[position]
            position += 2 if row.add else 1
            totals.append(int(value) if value is not None else 0)
        return totals

    async def purge(self) -> int:
        return 0

    async def aclose(self) -> None:
        await self.client.aclose()
