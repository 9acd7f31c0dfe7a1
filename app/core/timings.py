"""Where a request's time goes: named phases measured around the awaits that matter.

The request envelope (app/http/middleware.py) opens a request's phases; code on the
request's path wraps what it waits for in `phase(name)`: a database connection from the
pool (`pool_wait`), the page query (`page_query`), the audit commit (`audit_wait`), the
Management API (`auth0`), a DPoP proof's checks and its replay write (`dpop_proof`,
`dpop_replay`). The envelope adds `send` and reports every phase in the access
log and in `http_request_phase_seconds`. Outside a request (a background task, a test
calling a service directly) `phase` measures nothing and costs one context-variable read.

The event loop's lag (how late a timer fires) is the one delay no phase can see: a request
queued behind other work. `LoopLag` samples it into `event_loop_lag_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar, Token

from app.core.metrics import EVENT_LOOP_LAG

_PHASES: ContextVar[dict[str, float] | None] = ContextVar("request_phases", default=None)


def begin() -> Token[dict[str, float] | None]:
    """Start counting phases for the request running in this task."""
    return _PHASES.set({})


def finish(token: Token[dict[str, float] | None]) -> dict[str, float]:
    """The request's phases, in seconds; counting stops."""
    phases = _PHASES.get() or {}
    _PHASES.reset(token)
    return phases


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the time spent inside to the current request's `name` phase."""
    phases = _PHASES.get()
    if phases is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


class LoopLag:
    """Samples the event loop's lag every `interval` seconds while the app runs."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            EVENT_LOOP_LAG.observe(max(0.0, loop.time() - due))
