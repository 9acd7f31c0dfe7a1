"""Long commands show progress on a terminal (events done, rate, time left) and nothing of
it when piped: the progress writer (app/core/progress.py) on a real pseudo-terminal and on a
pipe, and `archive`, `verify-export` and `build-trees` run both ways, their standard output
the same."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import TextIO

import asyncpg
import httpx
import pytest

from app.audit.events import Event
from app.core.progress import Progress
from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.audit.archives import MONTH, THIS_MONTH, last_month
from tests.audit.support import ACME, GLOBEX, seed, window
from tests.audit.tamper import AUDIT_KEY, SCOPE_KEY, fetch_export, issue
from tests.fixtures.settings import make_settings

# A progress line: events done (of the total when known), the rate, the time left.
SHOWN = re.compile(r"[0-9,]+(/[0-9,]+)? events, [0-9,]+/s, about [0-9,]+ s left")
DONE = re.compile(r"[0-9,]+ events, [0-9,]+/s, done in [0-9.,]+ s")


def _terminal() -> tuple[int, TextIO]:
    """A pseudo-terminal: its master's descriptor, and its slave as a text stream."""
    master, slave = os.openpty()
    return master, os.fdopen(slave, "w", encoding="utf-8")


def _drain(master: int) -> str:
    """All the terminal showed, once every writer has closed it."""
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the slave side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks).decode()


def _env(database: ProvisionedDatabase) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUDIT_"))}
    return env | {"DATABASE_URL": database.app_url, "MIGRATIONS_DATABASE_URL": database.owner_url}


def on_terminal(env: dict[str, str], *args: str | Path) -> tuple[int, str, str]:
    """`python -m app audit ARGS` with stderr on a terminal and stdout piped, as an operator
    running `... > result.txt` sees it: exit code, stdout, what the terminal showed."""
    master, slave = os.openpty()
    shown: list[str] = []
    reader = threading.Thread(target=lambda: shown.append(_drain(master)))
    reader.start()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "app", "audit", *map(str, args)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(slave)
        reader.join(timeout=30)
    return process.returncode, process.stdout, shown[0]


def piped(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "audit", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(database, audit_signing_key=AUDIT_KEY, audit_scope_key=SCOPE_KEY)


class TestTheWriter:
    def test_a_terminal_sees_events_done_rate_and_time_left(self) -> None:
        master, stream = _terminal()
        shown = Progress("checked", 10, stream=stream, every=0)
        for done in (1, 5, 10):
            shown.update(done)
        shown.finish()
        stream.close()
        text = _drain(master)
        assert "checked: 1/10 events, " in text
        assert "checked: 5/10 events, " in text
        assert len(SHOWN.findall(text)) == 3
        assert DONE.search(text) is not None  # the last line, kept on the screen
        assert text.endswith("\r\n")  # the next output starts on a line of its own

    def test_an_unknown_total_takes_the_part_done(self) -> None:
        master, stream = _terminal()
        shown = Progress("read", stream=stream, every=0)
        shown.update(3)
        shown.update(6, 0.5)
        stream.close()
        text = _drain(master)
        assert "read: 3 events, " in text and "time left unknown" in text
        assert SHOWN.search(text) is not None

    def test_redrawn_at_most_every_interval(self) -> None:
        master, stream = _terminal()
        shown = Progress("written", 1_000_000, stream=stream, every=3600)
        for done in range(1, 100_001):
            shown.update(done)
        stream.close()
        assert len(SHOWN.findall(_drain(master))) == 1

    def test_a_pipe_gets_nothing(self) -> None:
        read, write = os.pipe()
        stream = os.fdopen(write, "w")
        shown = Progress("written", 10, stream=stream, every=0)
        shown.update(5)
        shown.finish()
        stream.close()
        with os.fdopen(read, "rb") as pipe:
            assert pipe.read() == b""
        buffer = io.StringIO()  # nor a file, nor a buffer
        Progress("written", 10, stream=buffer, every=0).update(5)
        assert buffer.getvalue() == ""


class TestCommands:
    async def test_archive(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        tmp_path: Path,
    ) -> None:
        await last_month(owner, ACME, 5)
        await last_month(owner, GLOBEX, 3)
        await issue(database)
        env = _env(database)
        plan = piped(env, "archive", "--before", THIS_MONTH, "--to", tmp_path, "--dry-run")
        assert (plan.returncode, plan.stderr) == (0, "")
        code, out, shown = on_terminal(
            env, "archive", "--before", THIS_MONTH, "--to", tmp_path, "--dry-run"
        )
        assert (code, out, shown) == (0, plan.stdout, "")  # a dry run has no progress
        code, out, shown = on_terminal(env, "archive", "--before", THIS_MONTH, "--to", tmp_path)
        assert code == 0, shown
        partition = f"audit_events_{MONTH.replace('-', '_')}"
        assert out == f"archived {MONTH}: 8 event(s), checked, {partition} detached\n"
        assert f"{MONTH} written: 1/8 events, " in shown
        assert f"{MONTH} checked: 1/8 events, " in shown
        assert SHOWN.search(shown) is not None and DONE.search(shown) is not None
        keys = tmp_path / "keys.json"  # and the archives' check, both ways
        keys.write_bytes((await client.get("/.well-known/audit-keys")).content)
        quiet = piped(env, "verify-archives", "--dir", tmp_path, "--keys", keys)
        assert (quiet.returncode, quiet.stderr) == (0, "")
        code, out, shown = on_terminal(env, "verify-archives", "--dir", tmp_path, "--keys", keys)
        assert (code, out) == (0, quiet.stdout)
        assert f"audit-{MONTH}.ndjson.gz verified: 1/8 events, " in shown

    async def test_verify_export(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        writer: asyncpg.Pool,
        database: ProvisionedDatabase,
        tmp_path: Path,
    ) -> None:
        for _ in range(4):
            await seed(writer, ACME, Event("patient.read", "R"))
        await issue(database)
        events, digests, keys = await fetch_export(client, acme, tmp_path, **window())
        args = ("verify-export", "--events", events, "--digests", digests, "--keys", keys)
        quiet = piped(_env(database), *args)
        assert (quiet.returncode, quiet.stderr) == (0, "")
        assert quiet.stdout.startswith("intact: ")
        code, out, shown = on_terminal(_env(database), *args)
        assert (code, out) == (0, quiet.stdout)
        assert "events checked: 1 events, " in shown
        assert SHOWN.search(shown) is not None and DONE.search(shown) is not None

    async def test_build_trees(
        self, writer: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        for _ in range(3):
            await seed(writer, ACME, Event("patient.read", "R"))
        quiet = piped(_env(database), "build-trees", "--batch", "2")
        assert (quiet.returncode, quiet.stderr) == (0, "")
        assert quiet.stdout == (
            "the audit trees cover every event up to seq 3 (3 leaves); the next digest signs "
            "their checkpoints\n"
        )
        for _ in range(6):
            await seed(writer, ACME, Event("patient.read", "R"))
        await owner.execute("ANALYZE audit_events")  # the planner's count: the total
        code, out, shown = on_terminal(_env(database), "build-trees", "--batch", "4")
        assert code == 0, shown
        assert out == (
            "the audit trees cover every event up to seq 9 (9 leaves); the next digest signs "
            "their checkpoints\n"
        )
        assert "leaves in the trees: 7/9 events, " in shown
        assert SHOWN.search(shown) is not None and DONE.search(shown) is not None
