"""What the rate-limit tests share: the window, a clock the test moves, and counting what a
limit admits."""

from __future__ import annotations

import time

from app.ratelimit import Limit

WINDOW = 60.0


def window_start() -> float:
    """The start of the current window. Taken when a test runs, not at import: Redis
    expires counters by the wall clock, so a fake clock must stay near it."""
    return (time.time() // WINDOW) * WINDOW


NEVER = 3600.0  # a sync interval the background task never reaches: tests sync explicitly


class FakeClock:
    def __init__(self, now: float | None = None) -> None:
        self.now = window_start() if now is None else now

    def __call__(self) -> float:
        return self.now


def admitted(limit: Limit, key: str, times: int) -> int:
    return sum(limit.check(key) is None for _ in range(times))
