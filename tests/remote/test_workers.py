"""Ten racing calls to a remote API of another audience over two real worker processes
(`python -m app serve --workers 2`) cause one grant at the tenant: the session row's lock
serialises the workers, each worker's task dict its own requests."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import httpx
from cryptography.fernet import Fernet

from devkit.db import ProvisionedDatabase
from devkit.keys import TokenMinter
from devkit.tenant.state import TenantState
from devkit.upstream import serve_upstream
from tests.fixtures.standin import SESSION_CLIENT_ID, SESSION_CLIENT_SECRET
from tests.fixtures.tenant import AUDIENCE, CLIENT_ID, CLIENT_SECRET, TENANT_DOMAIN
from tests.helpers import served_by_worker
from tests.remote.support import LABS
from tests.session.support import with_cookie
from tests.session.workers import browser_sign_in, free_port, serve_tenant, serve_two_workers

ROUNDS = 10  # a failsafe: rounds until both workers served one; one or two usually do
ROUTE = "/remote/{name}/{rest:path}"


async def _race(base: str, cookie: str) -> list[httpx.Response]:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as browser:
            return await browser.get(f"{base}/remote/other/whoami", headers=with_cookie(cookie))

    return await asyncio.gather(*(call() for _ in range(10)))


async def _served(directory: Path, before: dict[str, float], total: float) -> dict[str, float]:
    for _ in range(100):
        now = served_by_worker(directory, "GET", ROUTE, 200)
        served = {pid: n - before.get(pid, 0.0) for pid, n in now.items()}
        if sum(served.values()) >= total:
            break
        await asyncio.sleep(0.05)
    return {pid: n for pid, n in served.items() if n}


async def test_ten_racing_calls_over_two_worker_processes_cause_one_grant(
    database: ProvisionedDatabase, owner: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = TenantState(
        TokenMinter(TENANT_DOMAIN, AUDIENCE),
        CLIENT_ID,
        CLIENT_SECRET,
        session_client_id=SESSION_CLIENT_ID,
        session_client_secret=SESSION_CLIENT_SECRET,
        other_audiences={LABS},
    )
    port = free_port()
    with serve_upstream() as upstream:
        table = tmp_path / "remote-apis.json"
        route = {"upstream": upstream.url, "token": "user", "audience": LABS}
        table.write_text(json.dumps({"apis": {"other": route}}))
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
                "SESSION_ENCRYPTION_KEY": Fernet.generate_key().decode(),
                "PUBLIC_URL": f"http://127.0.0.1:{port}",
                "REMOTE_APIS_FILE": str(table),
            }
            async with serve_two_workers(database, tmp_path, port, settings) as workers:
                rounds: list[dict[str, float]] = []
                # A fresh session each round (no token for the audience yet), until both
                # workers served one round's calls.
                while len(rounds) < ROUNDS and not (rounds and len(rounds[-1]) == 2):
                    cookie = await browser_sign_in(workers.base, f"user-{len(rounds)}")
                    grants = tenant.counts["audience_grant"]
                    before = served_by_worker(workers.metrics_dir, "GET", ROUTE, 200)
                    upstream.seen.clear()

                    responses = await _race(workers.base, cookie)

                    sent = tenant.counts["audience_grant"] - grants
                    statuses = [r.status_code for r in responses]
                    assert statuses == [200] * 10, f"{sent} grants; {statuses}"
                    assert sent == 1  # one grant, not one per worker or per request
                    assert len(set(upstream.tokens())) == 1
                    rounds.append(await _served(workers.metrics_dir, before, 10))
                    assert sum(rounds[-1].values()) == 10, rounds
            assert len(rounds[-1]) == 2, f"one worker served every round: {rounds}"
    assert tenant.counts["refresh_reuse"] == 0  # no worker sent a rotated refresh token
    stored = await owner.fetchval("SELECT count(*) FROM session_audience_tokens")
    assert stored == len(rounds)
    logged = workers.log.read_text()
    for token in upstream.tokens():
        assert token not in logged
