"""Server processes for the benchmark: start, wait until ready, account CPU, stop.

Every server runs in a session (process group) of its own, so stopping it stops its
workers too and nothing else. CPU time is read with psutil from the server's whole process
tree (supervisor and workers) and from the Postgres backends serving the benchmark's
database, before and after each load run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from bench.kit.loopback import LOOPBACK, http_call


class ServerFailed(RuntimeError):
    pass


@dataclass
class Server:
    """One server command; `workers` is how many serving processes it should end up with."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    workers: int
    log_path: Path
    cwd: Path
    ready_path: str = "/healthz"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            if len(self.serving_pids()) >= self.workers and self._answers():
                return
            time.sleep(0.2)
        raise ServerFailed(f"{self.name} was not ready within {timeout:.0f}s: {self.tail()}")

    def _answers(self) -> bool:
        try:
            return http_call(self.url + self.ready_path, timeout=2)[0] == 200
        except OSError:
            return False

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def pids(self) -> list[int]:
        """The server's process tree: the command itself and every descendant."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def serving_pids(self) -> list[int]:
        """The processes that serve requests: the workers, or the command when it has none."""
        tree = self.pids()
        return tree[1:] if self.workers > 1 else tree[:1]

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def cpu_times(pids: list[int]) -> dict[int, float]:
    """user + system seconds of each live process."""
    seen: dict[int, float] = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        seen[pid] = times.user + times.system
    return seen


def process_cpu(pid: int) -> float:
    """CPU seconds one process has used: `/proc/<pid>/schedstat`'s nanoseconds where the
    kernel has them (psutil's user + system time ticks in 10 ms steps), else psutil's."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)


def postgres_backends(database: str) -> list[int]:
    """Backends connected to `database`: their title is `postgres: [cluster:] user db host ...`
    (the database name is generated, so it never collides with a user or cluster name)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            parts = " ".join(proc.info["cmdline"] or ()).split()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if parts and parts[0] == "postgres:" and database in parts[1:4]:
            found.append(proc.pid)
    return found


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots; a process born in between counts whole."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())
