"""The auditor's offline check from the console's integrity page alone: the keys, the
window's events and every signed digest downloaded there, then
`python -m app audit verify-export` on them says intact, and says broken once an event
the digests signed is rewritten."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.audit.tamper import AUDIT_KEY, SCOPE_KEY, issue, register
from tests.console.test_pages import _patient, page_headers
from tests.fixtures.app import running_app
from tests.fixtures.standin import StandIn
from tests.session.support import login, session_settings


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return session_settings(
        database,
        audit_digests=True,
        audit_signing_key=AUDIT_KEY,
        audit_scope_key=SCOPE_KEY,
        audit_digest_interval_seconds=86_400,
    )


@pytest.fixture
async def app(
    settings: Settings, standin: StandIn, database: ProvisionedDatabase
) -> AsyncIterator[httpx.AsyncClient]:
    await register(database)
    async with running_app(settings) as http:
        yield http


def _verify(directory: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH0_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "app", "audit", "verify-export",
         "--events", str(directory / "events.ndjson"),
         "--digests", str(directory / "digests.ndjson"),
         "--keys", str(directory / "keys.json")],
        cwd=directory, env=clean, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def _download(app: httpx.AsyncClient, cookie: str, directory: Path) -> None:
    page = await app.get("/console/integrity", headers=page_headers(cookie))
    assert page.status_code == 200
    links = {
        "keys.json": page.text.split('id="keys" href="')[1].split('"')[0],
        "events.ndjson": page.text.split('id="export" href="')[1].split('"')[0],
        "digests.ndjson": page.text.split('id="digests-file" href="')[1].split('"')[0],
    }
    for name, link in links.items():
        response = await app.get(link.replace("&amp;", "&"), headers=page_headers(cookie))
        assert response.status_code == 200, (name, response.text)
        (directory / name).write_bytes(response.content)


async def test_the_console_files_verify_offline_and_a_rewrite_shows(
    app: httpx.AsyncClient,
    database: ProvisionedDatabase,
    owner: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    cookie = await login(app, "alice")
    await _patient(app, cookie)
    await issue(database, registered=True)
    await _download(app, cookie, tmp_path)
    checked = _verify(tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("intact: ")
    views = await owner.fetch(
        "SELECT detail->>'view' AS view FROM audit_events WHERE actor = 'auth0|alice'"
        " AND action IN ('audit.read', 'audit.exported', 'audit.verified') ORDER BY seq"
    )
    assert [r["view"] for r in views] == ["console.integrity", "console.export", "console.digests"]

    seq = await owner.fetchval("SELECT seq FROM audit_events WHERE action = 'patient.read'")
    await owner.execute("SET session_replication_role = replica")  # user triggers off
    try:
        await owner.execute("UPDATE audit_events SET outcome = 'denied' WHERE seq = $1", seq)
    finally:
        await owner.execute("SET session_replication_role = origin")
    await _download(app, cookie, tmp_path)
    broken = _verify(tmp_path)
    assert broken.returncode == 1 and broken.stdout.startswith(f"broken: seq {seq}"), broken.stdout
