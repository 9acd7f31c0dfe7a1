"""The sync task: shares each copy's counts through the store, in one statement per tick.

See the package docstring for the algorithm and how far over a limit the copies can go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import asyncpg
from databases import Database

from app.core.db import pool_of
from app.core.settings import Quota
from app.core.tasks import cancelled
from app.ratelimit.quota import Entry, Limit, Window
from app.ratelimit.stores import CounterStore, PostgresCounters, RedisCounters, Row

logger = logging.getLogger(__name__)

# Rows outlive the window after theirs (when they are still read as "previous") by this
# much, so a copy whose clock runs a little behind never reads a purged window as empty.
RETENTION_GRACE_MS = 30_000


class GlobalRateLimiter:
    """The limits of one copy of the service, and the task that shares their counts.

    `sync_interval` bounds how stale one copy's view of the others is (see the package
    docstring); `max_batch` bounds the keys per sync statement (the rest wait a tick).
    """

    def __init__(
        self,
        *,
        sync_interval: float = 0.5,
        sync_timeout: float = 5.0,
        max_keys: int = 50_000,
        max_batch: int = 5_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sync_interval = sync_interval
        self.sync_timeout = sync_timeout
        self.max_keys = max_keys
        self.max_batch = max_batch
        self.limits: dict[str, Limit] = {}
        self.healthy = True  # the last sync reached the store
        self._clock = clock
        self._store: CounterStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def limit(self, name: str, quota: Quota) -> Limit:
        """A new limit; `name` prefixes its keys in the store (e.g. "ip", "user")."""
        if name in self.limits or ":" in name:
            raise ValueError(f"limit name {name!r} is taken or contains ':'")
        found = self.limits[name] = Limit(name, quota, max_keys=self.max_keys, clock=self._clock)
        return found

    async def start(
        self, target: Database | asyncpg.Pool | CounterStore, *, redis_url: str | None = None
    ) -> None:
        """Start syncing with `target`: the app's `Database`, an asyncpg pool, or a store
        (which `stop` then closes); with Redis instead when `redis_url` is given (without
        the `redis` package: ImportError, which the settings report at start-up first).
        Never fails for an unreachable store: limiting stays local until it answers."""
        if self._task is not None:
            raise RuntimeError("GlobalRateLimiter already started")
        if redis_url:
            target = RedisCounters.from_url(redis_url, timeout=self.sync_timeout)
        if isinstance(target, Database):
            self._store = PostgresCounters(lambda: pool_of(target), timeout=self.sync_timeout)
        elif isinstance(target, asyncpg.Pool):
            self._store = PostgresCounters(lambda: target, timeout=self.sync_timeout)
        else:
            self._store = target
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rate-limit-sync")

    async def stop(self) -> None:
        """Stop the task and flush what is unsent (bounded by `sync_timeout`)."""
        task, self._task = self._task, None
        await cancelled(task)
        store = self._store
        if store is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.sync(), timeout=self.sync_timeout)
            self._store = None
            await store.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval)
            try:
                await self.sync()
            except Exception:  # a bug here must not end the limiter's sharing for good
                logger.exception("rate-limit sync failed unexpectedly")

    async def sync(self) -> bool:
        """Send the unsent hits and read back the totals, in one statement; True when the
        store answered. Never raises for a store failure: the hits are kept for next time."""
        async with self._lock:
            started = self._clock()
            for limit in self.limits.values():
                limit.sweep(started)
            store = self._store
            if store is None:
                return False
            batch, rows, taken = self._collect(started)
            if not rows:
                return True
            try:
                totals = await store.add_and_read(rows)
            except Exception as exc:  # any store failure: limit locally, retry next tick
                for _, window, _ in batch:
                    window.unsent += window.sending
                    window.sending = 0
                for limit, keys in taken:
                    limit.mark_dirty(keys)
                if self.healthy:
                    logger.warning(
                        "rate-limit counters unreachable (%s); limiting per copy until back",
                        type(exc).__name__,
                    )
                self.healthy = False
                return False
            for (entry, window, settles_previous), total in zip(batch, totals, strict=True):
                window.count = total + window.unsent
                window.sending = 0
                if settles_previous and entry.previous is window:
                    entry.previous_settled = True
            if not self.healthy:
                logger.warning("rate-limit counters reachable again")
            self.healthy = True
            return True

    def _collect(
        self, now: float
    ) -> tuple[list[tuple[Entry, Window, bool]], list[Row], list[tuple[Limit, list[str]]]]:
        """The rows of one sync: each dirty key's current window (its hits, or a read) and
        its previous window until settled. Moves `unsent` to `sending`."""
        batch: list[tuple[Entry, Window, bool]] = []
        rows: list[Row] = []
        taken: list[tuple[Limit, list[str]]] = []
        budget = self.max_batch
        # Other copies flush a window's last hits within one interval of its end.
        settle_ms = 2 * self.sync_interval * 1000
        now_ms = now * 1000
        for limit in self.limits.values():
            if budget <= 0:
                break
            pairs = limit.take_dirty(budget)
            budget -= len(pairs)
            taken.append((limit, [key for key, _ in pairs]))
            period = limit.period_ms
            keep = 2 * period + RETENTION_GRACE_MS  # read as "previous" for one more window
            prefix = limit.name + ":"
            for key, entry in pairs:
                store_key = prefix + key
                previous = entry.previous
                windows: tuple[tuple[Window, bool], ...] = ((entry.current, False),)
                if not entry.previous_settled or previous.unsent:
                    settles = now_ms >= (previous.index + 1) * period + settle_ms
                    windows = ((entry.current, False), (previous, settles))
                for window, settles in windows:
                    start = window.index * period
                    window.sending, window.unsent = window.unsent, 0
                    rows.append(Row(store_key, start, start + keep, window.sending))
                    batch.append((entry, window, settles))
        return batch, rows, taken

    async def purge(self, conn: object = None) -> int:
        """Delete expired windows from the store; 0 when it fails (logged). A `Purge` job of
        app/core/tasks.py: the store has its own connection (or is Redis), so `conn` is
        not used."""
        if self._store is None:
            return 0
        try:
            return await self._store.purge()
        except Exception as exc:
            logger.warning("rate-limit purge failed (%s)", type(exc).__name__)
            return 0
