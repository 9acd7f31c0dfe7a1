"""The limits and the sync task: see the package docstring for the algorithm and its bound."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import asyncpg
from databases import Database

from app.core.db import pool_of
from app.core.errors import TooManyRequests
from app.core.settings import Quota
from app.ratelimit.stores import CounterStore, PostgresCounters, RedisCounters, Row

logger = logging.getLogger("app.ratelimit")

MAX_KEY_LENGTH = 128  # longer keys (never expected: IPs and subs) are stored as a digest
# Rows outlive the window after theirs (when they are still read as "previous") by this
# much, so a copy whose clock runs a little behind never reads a purged window as empty.
RETENTION_GRACE_MS = 30_000
# Float rounding in the estimate must not refuse a request at the very moment `check` said
# it would pass; counts are whole numbers, so this slack admits nothing extra.
_SLACK = 1e-6


def retry_after(wait: float) -> int:
    """Whole seconds for a `Retry-After` header: rounded up, at least 1."""
    return max(1, math.ceil(wait))


class _Window:
    """One fixed window's count for one key, as this copy knows it.

    `count` = the global total at the last sync + `sending` + `unsent`: it is what `check`
    compares, and stays right whether or not the sync in flight succeeds.
    """

    __slots__ = ("count", "index", "sending", "unsent")

    def __init__(self, index: int) -> None:
        self.index = index
        self.count = 0
        self.unsent = 0
        self.sending = 0


class _Entry:
    __slots__ = ("current", "previous", "previous_settled")

    def __init__(self, index: int) -> None:
        self.current = _Window(index)
        self.previous = _Window(index - 1)
        # The previous window's total is re-read until the other copies have surely flushed
        # their last hits to it; after that it cannot change.
        self.previous_settled = False

    def roll(self, index: int) -> None:
        if self.current.index == index - 1:
            self.previous = self.current
        else:  # idle for a whole window or more here; other copies may not have been
            self.previous = _Window(index - 1)
        self.current = _Window(index)
        self.previous_settled = False


class Limit:
    """One quota applied per key (an IP, a user id); made by `GlobalRateLimiter.limit`."""

    def __init__(
        self, name: str, quota: Quota, *, max_keys: int, clock: Callable[[], float]
    ) -> None:
        self.name = name
        self.quota = quota
        self.max_keys = max_keys
        self.evicted = 0
        self._clock = clock
        self._period_ms = round(quota.seconds * 1000)
        self._seconds = self._period_ms / 1000
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._dirty: dict[str, None] = {}  # keys to sync, in order; always a subset of entries

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, key: str) -> float | None:
        """Count one request for `key` and return None, or refuse it (not counted) and
        return the seconds until a request for `key` would be allowed. No I/O."""
        if len(key) > MAX_KEY_LENGTH:
            key = _digest(key)
        position = self._clock() / self._seconds  # in windows since the epoch
        index = int(position)
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            entry = self._admit(key, index)
        else:
            entries.move_to_end(key)
            if entry.current.index != index:
                if entry.current.index > index:  # the clock stepped back: stay put
                    index = entry.current.index
                    position = float(index)
                else:
                    entry.roll(index)
        self._dirty[key] = None
        current = entry.current
        limit = self.quota.count
        estimate = entry.previous.count * (1.0 - (position - index)) + current.count
        if estimate + 1 > limit + _SLACK:
            return self._wait(entry, position, index)
        current.count += 1
        current.unsent += 1
        return None

    def enforce(self, key: str) -> None:
        """`check`, raising `TooManyRequests` (429 with `Retry-After`) when refused."""
        wait = self.check(key)
        if wait is not None:
            raise TooManyRequests(retry_after(wait), "too many requests; try again later")

    def _admit(self, key: str, index: int) -> _Entry:
        while len(self._entries) >= self.max_keys:
            old, _ = self._entries.popitem(last=False)
            self._dirty.pop(old, None)  # its unsent hits go: the key was the least active
            self.evicted += 1
        entry = self._entries[key] = _Entry(index)
        return entry

    def _wait(self, entry: _Entry, position: float, index: int) -> float:
        """Seconds until the estimate leaves room for one more request, assuming no other
        hits arrive meanwhile (solved in closed form from the estimate above)."""
        limit = self.quota.count
        current = entry.current.count
        previous = entry.previous.count
        if current + 1 <= limit and previous > 0:
            # Room in this window once enough of the previous window's weight has slid out.
            allowed_at = index + 1 - (limit - current - 1) / previous
        else:
            # Wait for the next window, where this window's count becomes the previous one.
            allowed_at = index + 1 + max(0.0, 1 - (limit - 1) / current)
        return max((allowed_at - position) * self._seconds, 0.001)

    def _take_dirty(self, budget: int) -> list[tuple[str, _Entry]]:
        keys = list(itertools.islice(self._dirty, budget))
        for key in keys:
            del self._dirty[key]
        return [(key, self._entries[key]) for key in keys]

    def _mark_dirty(self, keys: Sequence[str]) -> None:
        for key in keys:
            if key in self._entries:
                self._dirty[key] = None

    def _sweep(self, now: float) -> None:
        """Forget keys not seen for two windows: neither of their windows counts any more."""
        stale_before = int(now / self._seconds) - 1
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.current.index >= stale_before:
                return
            del entries[key]
            self._dirty.pop(key, None)


class GlobalRateLimiter:
    """The limits of one copy of the service, and the task that shares their counts.

    `sync_interval` bounds how stale one copy's view of the others is (see the module
    docstring); `max_batch` bounds the keys per sync statement (the rest wait a tick).
    """

    def __init__(
        self,
        *,
        sync_interval: float = 0.5,
        purge_interval: float = 60.0,
        sync_timeout: float = 5.0,
        max_keys: int = 50_000,
        max_batch: int = 5_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sync_interval = sync_interval
        self.purge_interval = purge_interval
        self.sync_timeout = sync_timeout
        self.max_keys = max_keys
        self.max_batch = max_batch
        self.limits: dict[str, Limit] = {}
        self.healthy = True  # the last sync reached the store
        self._clock = clock
        self._store: CounterStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._last_purge = 0.0

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
        (which `stop` then closes); with Redis instead when `redis_url` is given and the
        `redis` package is installed. Never fails for an unreachable store: limiting stays
        local until it answers."""
        if self._task is not None:
            raise RuntimeError("GlobalRateLimiter already started")
        if redis_url:
            try:
                target = RedisCounters.from_url(redis_url, timeout=self.sync_timeout)
            except ImportError:
                logger.warning(
                    "REDIS_URL is set but the redis package is not installed; "
                    "sharing rate limits through Postgres"
                )
        if isinstance(target, Database):
            self._store = PostgresCounters(lambda: pool_of(target), timeout=self.sync_timeout)
        elif isinstance(target, asyncpg.Pool):
            self._store = PostgresCounters(lambda: target, timeout=self.sync_timeout)
        else:
            self._store = target
        self._last_purge = self._clock()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rate-limit-sync")

    async def stop(self) -> None:
        """Stop the task and flush what is unsent (bounded by `sync_timeout`)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
                if self._clock() - self._last_purge >= self.purge_interval:
                    self._last_purge = self._clock()
                    await self.purge()
            except Exception:  # a bug here must not end the limiter's sharing for good
                logger.exception("rate-limit sync failed unexpectedly")

    async def sync(self) -> bool:
        """Send the unsent hits and read back the totals, in one statement; True when the
        store answered. Never raises for a store failure: the hits are kept for next time."""
        async with self._lock:
            started = self._clock()
            for limit in self.limits.values():
                limit._sweep(started)
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
                    limit._mark_dirty(keys)
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
    ) -> tuple[list[tuple[_Entry, _Window, bool]], list[Row], list[tuple[Limit, list[str]]]]:
        """The rows of one sync: each dirty key's current window (its hits, or a read) and
        its previous window until settled. Moves `unsent` to `sending`."""
        batch: list[tuple[_Entry, _Window, bool]] = []
        rows: list[Row] = []
        taken: list[tuple[Limit, list[str]]] = []
        budget = self.max_batch
        # Other copies flush a window's last hits within one interval of its end.
        settle_ms = 2 * self.sync_interval * 1000
        now_ms = now * 1000
        for limit in self.limits.values():
            if budget <= 0:
                break
            pairs = limit._take_dirty(budget)
            budget -= len(pairs)
            taken.append((limit, [key for key, _ in pairs]))
            period = limit._period_ms
            keep = 2 * period + RETENTION_GRACE_MS  # read as "previous" for one more window
            prefix = limit.name + ":"
            for key, entry in pairs:
                store_key = prefix + key
                previous = entry.previous
                windows: tuple[tuple[_Window, bool], ...] = ((entry.current, False),)
                if not entry.previous_settled or previous.unsent:
                    settles = now_ms >= (previous.index + 1) * period + settle_ms
                    windows = ((entry.current, False), (previous, settles))
                for window, settles in windows:
                    start = window.index * period
                    window.sending, window.unsent = window.unsent, 0
                    rows.append(Row(store_key, start, start + keep, window.sending))
                    batch.append((entry, window, settles))
        return batch, rows, taken

    async def purge(self) -> int:
        """Delete expired windows from the store; 0 when it fails (logged)."""
        if self._store is None:
            return 0
        try:
            return await self._store.purge()
        except Exception as exc:
            logger.warning("rate-limit purge failed (%s)", type(exc).__name__)
            return 0


def _digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
