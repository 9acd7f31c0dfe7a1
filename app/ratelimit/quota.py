"""A limit per key: its sliding-window estimate, decided in memory without I/O.

The algorithm and its error bound are in the package docstring; `app.ratelimit.sync` shares
the counts between copies of the service.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

from app.core.errors import TooManyRequests
from app.core.settings import Quota

MAX_KEY_LENGTH = 128  # longer keys (never expected: IPs and subs) are stored as a digest
# Float rounding in the estimate must not refuse a request at the very moment `check` said
# it would pass; counts are whole numbers, so this slack admits nothing extra.
_SLACK = 1e-6


def retry_after(wait: float) -> int:
    """Whole seconds for a `Retry-After` header: rounded up, at least 1."""
    return max(1, math.ceil(wait))


class Window:
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


class Entry:
    """One key's current and previous windows."""

    __slots__ = ("current", "previous", "previous_settled")

    def __init__(self, index: int) -> None:
        self.current = Window(index)
        self.previous = Window(index - 1)
        # The previous window's total is re-read until the other copies have surely flushed
        # their last hits to it; after that it cannot change.
        self.previous_settled = False

    def roll(self, index: int) -> None:
        if self.current.index == index - 1:
            self.previous = self.current
        else:  # idle for a whole window or more here; other copies may not have been
            self.previous = Window(index - 1)
        self.current = Window(index)
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
        self.period_ms = round(quota.seconds * 1000)
        self._clock = clock
        self._seconds = self.period_ms / 1000
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
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

    def _admit(self, key: str, index: int) -> Entry:
        while len(self._entries) >= self.max_keys:
            old, _ = self._entries.popitem(last=False)
            self._dirty.pop(old, None)  # its unsent hits go: the key was the least active
            self.evicted += 1
        entry = self._entries[key] = Entry(index)
        return entry

    def _wait(self, entry: Entry, position: float, index: int) -> float:
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

    # --- For the sync task (app.ratelimit.sync) ---------------------------------------------

    def take_dirty(self, budget: int) -> list[tuple[str, Entry]]:
        """Up to `budget` keys hit since they were last taken (first hit first), with entries."""
        keys = list(itertools.islice(self._dirty, budget))
        for key in keys:
            del self._dirty[key]
        return [(key, self._entries[key]) for key in keys]

    def mark_dirty(self, keys: Sequence[str]) -> None:
        """Take these keys again next time (their sync failed); keys evicted since are skipped."""
        for key in keys:
            if key in self._entries:
                self._dirty[key] = None

    def sweep(self, now: float) -> None:
        """Forget keys not seen for two windows: neither of their windows counts any more."""
        stale_before = int(now / self._seconds) - 1
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.current.index >= stale_before:
                return
            del entries[key]
            self._dirty.pop(key, None)


def _digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
