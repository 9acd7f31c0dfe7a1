"""The uvicorn server the CLI runs, and the supervisor of its workers."""

from __future__ import annotations

from types import FrameType

import uvicorn
from uvicorn.supervisors import Multiprocess

from app.core.metrics import prepare_multiprocess, worker_exited


class GracefulServer(uvicorn.Server):
    """SIGTERM/SIGINT drain in-flight requests, then exit 0 (uvicorn would re-raise them)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


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


def run_workers(config: uvicorn.Config) -> None:
    """Serve with `config.workers` processes whose metrics one scrape sums."""
    prepare_multiprocess(config.workers)  # before any worker imports prometheus-client
    WorkerSupervisor(config, sockets=[config.bind_socket()]).run()
