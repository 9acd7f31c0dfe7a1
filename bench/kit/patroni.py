"""A Postgres cluster managed by Patroni, on loopback, for the failover runs.

The engines self-hosted operators run, from Debian: one `etcd` (etcd-server 3.4, reached
through Patroni's `etcd3:` section), a Patroni (3.0) per node, each managing its own
postmaster on a free port, data in a temporary directory. As root, Patroni and Postgres
run as the `postgres` system user (Postgres refuses root). The machine's own Postgres is
never touched. `kill()` ends a node as a crash would: Patroni, its postmaster and every
backend at once with SIGKILL, so the leader key expires and a standby is elected.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from bench.kit.loopback import LOOPBACK, free_port, http_call
from bench.kit.pgcluster import ClusterUnavailable, _system_user, find_binaries

TOOLS = ("etcd", "patroni", "patronictl", "haproxy")
INSTALL = "DEBIAN_FRONTEND=noninteractive apt-get install -y patroni etcd-server haproxy"


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed: {INSTALL}")


@dataclass
class Node:
    name: str
    root: Path
    pg_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.root / f"{self.name}.yml"

    @property
    def data(self) -> Path:
        return self.root / self.name

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    def rest(self, path: str) -> tuple[int, bytes] | None:
        try:
            return http_call(f"http://{LOOPBACK}:{self.api_port}{path}", timeout=1)
        except OSError:
            return None

    def start(self, user: str | None) -> None:
        argv = ["patroni", str(self.config)]
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def walsenders(self) -> list[psutil.Process]:
        """The leader's WAL senders: stopping them makes its standbys lag, with the WAL
        they have not been sent still on the leader alone."""
        with contextlib.suppress(OSError, ValueError, IndexError, psutil.NoSuchProcess):
            postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
            return [c for c in postmaster.children() if "walsender" in " ".join(c.cmdline())]
        return []

    def kill(self) -> None:
        """Patroni, its postmaster and the backends, all at once (SIGKILL)."""
        victims: list[psutil.Process] = []
        with contextlib.suppress(OSError, ValueError, IndexError, psutil.NoSuchProcess):
            postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
            victims += [postmaster, *postmaster.children(recursive=True)]
        if self.proc is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                patroni = psutil.Process(self.proc.pid)
                victims += [patroni, *patroni.children(recursive=True)]
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        """Patroni stops its postmaster on SIGTERM; SIGKILL if it takes too long."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None


def _yaml(value: object, indent: int = 0) -> str:
    """Patroni's YAML from dicts, lists and scalars (JSON scalars are YAML)."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:\n{_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {json.dumps(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        return "\n".join(f"{pad}- {json.dumps(item)}" for item in value)
    return f"{pad}{json.dumps(value)}"


class PatroniCluster:
    """`with PatroniCluster(2, synchronous=True) as cluster:` etcd and the nodes up, one
    leader and its replicas streaming (in synchronous mode: one of them synchronous)."""

    def __init__(self, nodes: int = 2, *, synchronous: bool = True, ttl: int = 6) -> None:
        require_tools()
        self.bin = find_binaries()
        self.user = _system_user()
        self.root = Path(tempfile.mkdtemp(prefix="bff-patroni-"))
        self.synchronous = synchronous
        self.ttl = ttl
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.etcd: subprocess.Popen[bytes] | None = None
        self.nodes = [Node(f"node{n}", self.root) for n in range(nodes)]

    def hosts(self) -> str:
        """Every node as libpq's host list: `127.0.0.1:p1,127.0.0.1:p2`."""
        return ",".join(f"{LOOPBACK}:{node.pg_port}" for node in self.nodes)

    def _node_config(self, node: Node) -> dict[str, object]:
        hba = [
            "local all all trust",
            f"host all all {LOOPBACK}/32 trust",
            f"host replication all {LOOPBACK}/32 trust",
        ]
        return {
            "scope": "bff-failover",
            "name": node.name,
            "restapi": {
                "listen": f"{LOOPBACK}:{node.api_port}",
                "connect_address": f"{LOOPBACK}:{node.api_port}",
            },
            "etcd3": {"hosts": [f"{LOOPBACK}:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    # loop_wait + 2 * retry_timeout <= ttl (Patroni's rule).
                    "ttl": self.ttl,
                    "loop_wait": 1,
                    "retry_timeout": max(1, (self.ttl - 1) // 2),
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "synchronous_mode": self.synchronous,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {"wal_keep_size": "256MB", "max_connections": 100},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": f"{LOOPBACK}:{node.pg_port}",
                "connect_address": f"{LOOPBACK}:{node.pg_port}",
                "data_dir": str(node.data),
                "bin_dir": str(self.bin),
                "pgpass": str(self.root / f"{node.name}.pgpass"),
                "pg_hba": hba,
                "authentication": {
                    "superuser": {"username": "postgres", "password": "failover"},
                    "replication": {"username": "replicator", "password": "failover"},
                    "rewind": {"username": "rewinder", "password": "failover"},
                },
                "parameters": {"unix_socket_directories": str(self.root)},
            },
        }

    def start(self) -> None:
        if self.user is not None:
            shutil.chown(self.root, self.user)
        etcd_data = Path(tempfile.mkdtemp(prefix="bff-etcd-"))
        self._etcd_data = etcd_data
        peer = f"http://{LOOPBACK}:{self.etcd_peer_port}"
        client = f"http://{LOOPBACK}:{self.etcd_port}"
        with open(self.root / "etcd.log", "ab") as log:
            self.etcd = subprocess.Popen(
                [
                    "etcd",
                    "--name=e0",
                    f"--data-dir={etcd_data}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=e0={peer}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait(lambda: self._etcd_healthy(), 30, "etcd did not start")
        for node in self.nodes:
            node.config.write_text(_yaml(self._node_config(node)) + "\n")
            if self.user is not None:
                shutil.chown(node.config, self.user)
        self.nodes[0].start(self.user)
        self._wait(lambda: self.leader() is not None, 60, "no leader")
        for node in self.nodes[1:]:
            node.start(self.user)
        self.wait_healthy()

    def _etcd_healthy(self) -> bool:
        try:
            return http_call(f"http://{LOOPBACK}:{self.etcd_port}/health", timeout=1)[0] == 200
        except OSError:
            return False

    def members(self) -> list[dict[str, object]]:
        for node in self.nodes:
            answer = node.rest("/cluster")
            if answer is not None and answer[0] == 200:
                return list(json.loads(answer[1]).get("members", []))
        return []

    def leader(self) -> Node | None:
        for member in self.members():
            if member.get("role") == "leader" and member.get("state") == "running":
                return next((n for n in self.nodes if n.name == member["name"]), None)
        return None

    def wait_healthy(self, timeout: float = 90) -> None:
        """A leader, and every other node streaming (synchronous mode: one sync standby)."""

        def healthy() -> bool:
            members = self.members()
            running = [m for m in members if m.get("state") in {"running", "streaming"}]
            if len(running) < len(self.nodes) or self.leader() is None:
                return False
            return not self.synchronous or any(m.get("role") == "sync_standby" for m in members)

        self._wait(healthy, timeout, "the cluster did not become healthy")

    def switchover(self, candidate: Node) -> None:
        """A planned switchover to `candidate` (`patronictl switchover`)."""
        leader = self.leader()
        assert leader is not None
        argv = ["patronictl", "-c", str(leader.config), "switchover", "--force"]
        argv += ["--leader", leader.name, "--candidate", candidate.name]
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise ClusterUnavailable(f"switchover failed: {(done.stderr or done.stdout)[-600:]}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(
            f"--- {node.name}\n"
            + "\n".join(node.log.read_text(errors="replace").splitlines()[-lines:])
            for node in self.nodes
            if node.log.exists()
        )

    @staticmethod
    def _wait(condition: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(condition) and condition():
                return
            time.sleep(0.2)
        raise ClusterUnavailable(what)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.etcd is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.etcd.pid, signal.SIGTERM)
            self.etcd.wait(10)
            self.etcd = None
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(getattr(self, "_etcd_data", self.root), ignore_errors=True)

    def __enter__(self) -> PatroniCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
