"""HAProxy (Debian's `haproxy`) on loopback, in front of a Patroni cluster or of copies of
the service, set up as their documentation sets it up.

- `postgres`: TCP to the node whose Patroni REST API answers `OPTIONS /primary` with 200
  (the leader), checked every 0.5 s; a node marked down has its sessions shut, so clients
  reconnect to the new leader instead of waiting on a dead one.
- `service`: HTTP to the copies whose `GET /readyz` answers 200, checked every 0.5 s; a
  copy that drains (SHUTDOWN_DRAIN_SECONDS) is out of rotation after one failed check.
  With `retries`, a request that could not reach a copy at all is sent to another
  (`retry-on conn-failure`: nothing reached the copy, so a POST is as safe to resend).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.kit.loopback import LOOPBACK, free_port

CHECK = "inter 500ms fastinter 250ms downinter 500ms"


def postgres_section(port: int, nodes: list[tuple[str, int, int]]) -> str:
    """`nodes`: (name, Postgres port, Patroni REST port) each."""
    servers = "\n".join(
        f"    server {name} {LOOPBACK}:{pg} maxconn 100 check port {api}" for name, pg, api in nodes
    )
    return f"""
listen postgres
    mode tcp
    bind {LOOPBACK}:{port}
    option httpchk OPTIONS /primary
    http-check expect status 200
    timeout client 30m
    timeout server 30m
    default-server {CHECK} fall 2 rise 1 on-marked-down shutdown-sessions
{servers}
"""


def service_section(port: int, copies: list[tuple[str, int]], *, retries: bool = True) -> str:
    """`copies`: (name, port) of each copy of the service. Without `retries`, a request
    that cannot reach its copy fails (503) as behind a balancer that never retries."""
    servers = "\n".join(f"    server {name} {LOOPBACK}:{p} check" for name, p in copies)
    retrying = (
        "    option redispatch\n    retries 3\n    retry-on conn-failure"
        if retries
        else "    retries 0"
    )
    return f"""
listen service
    mode http
    bind {LOOPBACK}:{port}
    option httpchk GET /readyz
    http-check expect status 200
{retrying}
    timeout client 30s
    timeout server 30s
    default-server {CHECK} fall 1 rise 2
{servers}
"""


class HAProxy:
    """`with HAProxy(sections) as proxy:` HAProxy running with those `listen` sections."""

    def __init__(self, sections: str, ports: list[int]) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="bff-haproxy-"))
        self.config = self.directory / "haproxy.cfg"
        self.log = self.directory / "haproxy.log"
        self.ports = ports
        self.config.write_text(
            "global\n    maxconn 1000\n\ndefaults\n    timeout connect 1s\n"
            "    timeout check 1s\n" + sections
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["haproxy", "-db", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text()[-800:]}")
            if all(_listening(port) for port in self.ports):
                return
            time.sleep(0.1)
        raise RuntimeError("haproxy did not listen within 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> HAProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


__all__ = ["HAProxy", "free_port", "postgres_section", "service_section"]
