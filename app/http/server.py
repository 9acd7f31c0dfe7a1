"""The uvicorn server the CLI runs, and the supervisor of its workers.

Stopping (SIGTERM or SIGINT) drains: with `shutdown_drain_seconds` > 0 the process first
says it is stopping (`/readyz` answers 503 at once) and goes on serving for that long, so a
load balancer's health check takes it out of rotation before anything is refused; then it
stops accepting, finishes the requests in flight, and runs the lifespan's shutdown (the
listeners and the pool close). A second signal ends the drain early. With several workers
each worker drains the same way when the supervisor passes SIGTERM on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess, multiprocess

from app.core.metrics import prepare_multiprocess, worker_exited

logger = logging.getLogger(__name__)

# Set once this process was told to stop; `/readyz` reads it. One per process, as the
# signal that sets it is.
_stopping = threading.Event()


def stopping() -> bool:
    """Whether this process was told to stop (and is draining or shutting down)."""
    return _stopping.is_set()


class ServeConfig(uvicorn.Config):
    """uvicorn's configuration and the drain, which workers receive with it."""

    def __init__(self, app: Any, *, shutdown_drain_seconds: float = 0.0, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.shutdown_drain_seconds = shutdown_drain_seconds


class GracefulServer(uvicorn.Server):
    """SIGTERM/SIGINT drain (above), then exit 0 (uvicorn would re-raise the signal)."""

    _drain_until: float | None = None

    @property
    def drain_seconds(self) -> float:
        return float(getattr(self.config, "shutdown_drain_seconds", 0.0))

    def run(self, sockets: Any = None) -> None:
        _stopping.clear()
        super().run(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        _stopping.set()
        if self._drain_until is None and self.drain_seconds > 0 and not self.should_exit:
            # Signal-handler context: only note when to stop; `on_tick` acts on it.
            self._drain_until = time.monotonic() + self.drain_seconds
            logger.info("stopping: draining for %gs", self.drain_seconds)
            return
        super().handle_exit(sig, frame)
        self._captured_signals.clear()

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        return await super().on_tick(counter)


class DrainingWorker(multiprocess.Process):
    """A worker whose server is a `GracefulServer` (uvicorn's would be a plain one)."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = GracefulServer(config=self.config)
        return self._server


class WorkerSupervisor(Multiprocess):
    """uvicorn's supervisor; a worker that goes (died and replaced, restarted on SIGHUP,
    removed on SIGTTOU) has its live gauges dropped from the summed metrics."""

    def _pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.pid is not None}

    def keep_subprocess_alive(self) -> None:
        before = self._pids()
        super().keep_subprocess_alive()
        self._forget(before)

    def handle_signals(self) -> None:
        before = self._pids()
        super().handle_signals()
        self._forget(before)

    def _forget(self, before: set[int]) -> None:
        for pid in before - self._pids():
            worker_exited(pid)


@contextlib.contextmanager
def _workers_drain() -> Iterator[None]:
    """uvicorn's supervisor makes every worker (the first ones, replacements, SIGHUP's
    restarts) as `multiprocess.Process`; for as long as it runs, that is `DrainingWorker`.
    The supervisor is the whole of its process, so nothing else sees the swap."""
    original = multiprocess.Process
    multiprocess.Process = DrainingWorker  # type: ignore[misc]
    try:
        yield
    finally:
        multiprocess.Process = original  # type: ignore[misc]


def run_workers(config: uvicorn.Config) -> None:
    """Serve with `config.workers` processes whose metrics one scrape sums."""
    prepare_multiprocess(config.workers)  # before any worker imports prometheus-client
    with _workers_drain():
        WorkerSupervisor(config, sockets=[config.bind_socket()]).run()
