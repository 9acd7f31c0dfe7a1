"""A circuit breaker for one upstream: consecutive failures open it for a cool-down.

While open, calls fail at once with 503 and a `Retry-After` of the cool-down left. After the
cool-down one trial call is let through; its success closes the breaker, its failure reopens
it at once (failures reset only on success). Anything the upstream answers below 500 counts
as a success: a 4xx shows it is up. `on_change(True)` is called when it opens and
`on_change(False)` when a success closes it (the transport sets a metric with it).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable

from app.core.errors import UpstreamUnavailable

logger = logging.getLogger(__name__)


class CircuitBreaker:
    """`admit()` before a call (raises while open; True for the half-open trial), then
    `record(ok=...)` with its outcome, or `abandon_trial()` when the trial never finished.
    `stats` counts `breaker_rejections` and `breaker_opened`."""

    def __init__(
        self,
        *,
        failures: int,
        cooldown_seconds: float,
        clock: Callable[[], float],
        stats: Counter[str],
        name: str = "Auth0",
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.failures_to_open = failures
        self.cooldown_seconds = cooldown_seconds
        self.name = name
        self._clock = clock
        self._stats = stats
        self._on_change = on_change
        self._failures = 0
        self._open_until: float | None = None
        self._trial_in_flight = False

    def admit(self) -> bool:
        """Raise while open; after the cool-down admit one trial. True for the trial."""
        if self._open_until is None:
            return False
        now = self._clock()
        if now < self._open_until or self._trial_in_flight:
            self._stats["breaker_rejections"] += 1
            wait = max(self._open_until - now, 1.0)
            raise UpstreamUnavailable(f"{self.name} is unavailable", retry_after=math.ceil(wait))
        self._trial_in_flight = True
        return True

    def record(self, *, ok: bool) -> None:
        """Note an answer (or a network failure, `ok=False`)."""
        if ok:
            was_open = self._open_until is not None
            self._failures, self._open_until, self._trial_in_flight = 0, None, False
            if was_open and self._on_change is not None:
                self._on_change(False)
            return
        self._failures += 1
        # Failures reset only on success, so a failed half-open trial reopens at once.
        if self._failures >= self.failures_to_open:
            if self._open_until is None or self._trial_in_flight:
                self._stats["breaker_opened"] += 1
                logger.error("%s circuit breaker open after %d failures", self.name, self._failures)
                if self._on_change is not None:
                    self._on_change(True)
            self._open_until = self._clock() + self.cooldown_seconds
            self._trial_in_flight = False

    def abandon_trial(self) -> None:
        """The trial was cancelled or broke before an answer: let the next call try instead."""
        self._trial_in_flight = False
