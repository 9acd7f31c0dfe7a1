"""Ten racing requests over two real worker processes (`python -m app serve --workers 2`)
cause one refresh grant at the tenant: the row lock serialises the workers, the task dict
each worker's own requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
from cryptography.fernet import Fernet

from app.session.crypto import TokenBox, cookie_hash
from devkit.db import ProvisionedDatabase
from devkit.keys import TokenMinter
from devkit.tenant.state import TenantState
from tests.fixtures.standin import SESSION_CLIENT_ID, SESSION_CLIENT_SECRET
from tests.fixtures.tenant import AUDIENCE, CLIENT_ID, CLIENT_SECRET, TENANT_DOMAIN
from tests.helpers import served_by_worker
from tests.session.support import with_cookie
from tests.session.workers import (
    browser_sign_in,
    free_port,
    serve_tenant,
    serve_two_workers,
)

ROUNDS = 10  # a failsafe: rounds until both workers served one; one or two usually do


async def _race(base: str, cookie: str) -> list[httpx.Response]:
    """Ten concurrent reads with the cookie, each on its own connection."""

    async def read() -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as browser:
            return await browser.get(f"{base}/api/patients", headers=with_cookie(cookie))

    return await asyncio.gather(*(read() for _ in range(10)))


async def _served(directory: Path, before: dict[str, float], total: float) -> dict[str, float]:
    """Per worker, the reads it answered since `before`; waits until all `total` are counted
    (a worker counts a request just after its response is sent)."""
    for _ in range(100):
        now = served_by_worker(directory, "GET", "/api/patients", 200)
        served = {pid: n - before.get(pid, 0.0) for pid, n in now.items()}
        if sum(served.values()) >= total:
            break
        await asyncio.sleep(0.05)
    return {pid: n for pid, n in served.items() if n}


async def test_ten_racing_requests_over_two_worker_processes_cause_one_refresh(
    database: ProvisionedDatabase, owner: asyncpg.Connection, tmp_path: Path
) -> None:
    key = Fernet.generate_key().decode()
    tenant = TenantState(
        TokenMinter(TENANT_DOMAIN, AUDIENCE),
        CLIENT_ID,
        CLIENT_SECRET,
        session_client_id=SESSION_CLIENT_ID,
        session_client_secret=SESSION_CLIENT_SECRET,
    )
    port = free_port()
    async with serve_tenant(tenant) as tenant_url:
        settings = {
            "AUTH0_DOMAIN": TENANT_DOMAIN,
            "AUTH0_AUDIENCE": AUDIENCE,
            "AUTH0_CLIENT_ID": CLIENT_ID,
            "AUTH0_CLIENT_SECRET": CLIENT_SECRET,
            "APP_SECRET_KEY": "0123456789abcdef0123456789abcdef-test",
            "AUTH0_BASE_URL": tenant_url,
            "SESSION_CLIENT_ID": SESSION_CLIENT_ID,
            "SESSION_CLIENT_SECRET": SESSION_CLIENT_SECRET,
            "SESSION_ENCRYPTION_KEY": key,
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
        }
        async with serve_two_workers(database, tmp_path, port, settings) as workers:
            rounds: list[dict[str, float]] = []
            # A fresh session each round (a worker caches a session it has read, so an
            # UPDATE alone would not make a used one due there), until both workers served.
            while len(rounds) < ROUNDS and not (rounds and len(rounds[-1]) == 2):
                cookie = await browser_sign_in(workers.base, f"user-{len(rounds)}")
                hashed = cookie_hash(cookie)
                due = await owner.execute(
                    "UPDATE browser_sessions"
                    " SET access_expires_at = now() + interval '10 seconds'"
                    " WHERE cookie_hash = $1 AND refreshed_at IS NULL",
                    hashed,
                )
                assert due == "UPDATE 1"
                grants = tenant.counts["refresh_grant"]
                before = served_by_worker(workers.metrics_dir, "GET", "/api/patients", 200)

                responses = await _race(workers.base, cookie)

                sent = tenant.counts["refresh_grant"] - grants
                statuses = [r.status_code for r in responses]
                assert statuses == [200] * 10, f"{sent} refresh grants; {statuses}"
                assert sent == 1  # one refresh, not one per worker or per request
                row = await owner.fetchrow(
                    "SELECT refreshed_at, access_token, refresh_token FROM browser_sessions"
                    " WHERE cookie_hash = $1",
                    hashed,
                )
                assert row is not None and row["refreshed_at"] is not None
                rounds.append(await _served(workers.metrics_dir, before, 10))
                assert sum(rounds[-1].values()) == 10, rounds
        assert len(rounds[-1]) == 2, f"one worker served every round: {rounds}"

    assert tenant.counts["refresh_reuse"] == 0  # no worker sent a rotated refresh token
    logged = workers.log.read_text()
    box = TokenBox(key)
    for secret in (
        CLIENT_SECRET,
        SESSION_CLIENT_SECRET,
        key,
        box.open(row["access_token"]),
        box.open(row["refresh_token"]),
    ):
        assert secret not in logged
