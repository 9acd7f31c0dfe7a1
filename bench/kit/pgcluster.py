"""A private, throwaway Postgres cluster that a fault run may stop and restart at will.

The shared server on 5432 is never touched: `initdb` makes a cluster in a temporary
directory, `pg_ctl` runs it on a free loopback port (its socket stays in that directory).
The binaries come from PG_BIN, else /usr/lib/postgresql/<newest>/bin, else the embedded
`pgserver` package. Postgres refuses to run as root, so as root the cluster belongs to the
`postgres` (or `pgserver`) system user and every command runs as that user.

`StandbyCluster(primary)` is a streaming standby of one (`pg_basebackup -R`), which
`promote()` turns into a primary: a failover without a failover manager.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.kit.loopback import LOOPBACK, free_port


class ClusterUnavailable(RuntimeError):
    """No Postgres binaries to make a private cluster with; the message says what to do."""


def find_binaries() -> Path:
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name)
    candidates += reversed(versions)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    try:  # imported only now: importing pgserver has side effects (a runtime directory)
        from pgserver._commands import POSTGRES_BIN_PATH  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return Path(POSTGRES_BIN_PATH)
    raise ClusterUnavailable(
        "no initdb/pg_ctl for a private Postgres cluster: install postgresql (e.g. "
        "apt-get install postgresql-15), set PG_BIN, or pip install pgserver"
    )


def _system_user() -> str | None:
    """None when we may run Postgres ourselves, else the user to run it as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise ClusterUnavailable("running as root and no 'postgres' system user to run Postgres as")


class PrivateCluster:
    """`with PrivateCluster() as cluster:` a running cluster; `cluster.admin_url` is its
    superuser URL (trust authentication, loopback only)."""

    def __init__(self) -> None:
        self.bin = find_binaries()
        self.user = _system_user()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="bff-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ClusterUnavailable(f"{argv[0]} failed: {(done.stderr or done.stdout)[-800:]}")

    def init(self) -> None:
        if self.user is not None:
            shutil.chown(self.root, self.user)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        options = (
            f"-c listen_addresses={LOOPBACK} -p {self.port} -k {self.root} "
            "-c fsync=off -c max_connections=60"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )

    def promote(self) -> None:
        """A standby becomes a primary (accepts writes) once this returns."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "promote")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self, down_seconds: float = 2.0, mode: str = "fast") -> tuple[float, float]:
        """Stop, stay down `down_seconds`, start; (stopped at, started at), monotonic."""
        self.stop(mode)
        stopped = time.monotonic()
        time.sleep(down_seconds)
        self.start()
        return stopped, time.monotonic()

    def __enter__(self) -> PrivateCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop("immediate")
        except ClusterUnavailable:
            pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class StandbyCluster(PrivateCluster):
    """A streaming standby of `primary`, on a port and in a directory of its own; read-only
    until `promote()`. initdb's loopback `trust` lines already allow the replication."""

    def __init__(self, primary: PrivateCluster) -> None:
        super().__init__()
        self.primary = primary

    def init(self) -> None:
        if self.user is not None:
            shutil.chown(self.root, self.user)
        self._run(
            "pg_basebackup",
            "-h",
            LOOPBACK,
            "-p",
            str(self.primary.port),
            "-U",
            "postgres",
            "-D",
            str(self.data),
            "-R",  # standby.signal and primary_conninfo: it streams from the primary
            "-X",
            "stream",
            "--no-sync",
        )
