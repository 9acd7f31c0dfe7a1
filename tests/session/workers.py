"""Real processes for the cookie-session tests: the stand-in tenant on a loopback port in the
test's event loop, `python -m app serve --workers 2` against the test's database, a sign-in
over HTTP, and how many requests each worker served (its own multiprocess metrics file).

Not a test module; `test_refresh_workers.py` uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import uvicorn

from app.core import metrics
from app.session.cookies import SESSION_COOKIE, TX_COOKIE
from devkit.db import ProvisionedDatabase
from devkit.tenant.app import create_tenant_app
from devkit.tenant.state import TenantState
from tests.fixtures.standin import sign_in
from tests.session.support import cookie_value

START_SECONDS = 60  # a failsafe for a loaded machine, not a measure


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _QuietServer(uvicorn.Server):
    """A server in the test's loop leaves signal handling to pytest."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_tenant(state: TenantState) -> AsyncIterator[str]:
    """The stand-in tenant on a loopback port, served by this event loop; yields its URL."""
    port = free_port()
    server = _QuietServer(
        uvicorn.Config(
            create_tenant_app(state),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + START_SECONDS
    while not server.started:
        assert not task.done(), "the stand-in tenant did not start"
        assert time.monotonic() < deadline, "the stand-in tenant did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Workers:
    """`serve --workers 2` running: its URL, metrics directory and log file."""

    base: str
    metrics_dir: Path
    log: Path


@contextlib.asynccontextmanager
async def serve_two_workers(
    database: ProvisionedDatabase, directory: Path, port: int, settings: dict[str, str]
) -> AsyncIterator[Workers]:
    """`python -m app serve --workers 2 --port {port}` on `database` with the environment
    `settings` (on top of the database URL, the metrics directory and no rate limits); yields
    once both workers have imported the app and the service answers; stops it with SIGTERM."""
    metrics_dir = directory / "metrics"
    metrics_dir.mkdir()
    log = directory / "serve.log"
    prefixes = ("AUTH0_", "DATABASE", "SESSION_", "PUBLIC_URL", "RATE_LIMIT", "PROMETHEUS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(
        {
            "DATABASE_URL": database.app_url,
            metrics.MULTIPROC_ENV: str(metrics_dir),
            "RATE_LIMIT_PER_IP": "off",
            "RATE_LIMIT_PER_USER": "off",
            **settings,
        }
    )
    with log.open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "app", "serve", "--workers", "2", "--port", str(port)),
            cwd=directory,  # no .env of the checkout
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        # Both workers have imported the app: each made its own histogram file.
        while len(list(metrics_dir.glob("histogram_*.db"))) < 2 or not await _answers(base):
            assert process.returncode is None, log.read_text()
            assert time.monotonic() < deadline, "the workers did not start"
            await asyncio.sleep(0.1)
        yield Workers(base, metrics_dir, log)
        process.send_signal(signal.SIGTERM)
        # Awaited: the workers may still call the tenant, which this loop serves.
        assert await asyncio.wait_for(process.wait(), 30) == 0, log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _answers(base: str) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{base}/openapi.json")).status_code == 200
    except httpx.TransportError:
        return False


async def browser_sign_in(base: str, username: str) -> str:
    """A browser's sign-in over HTTP: /auth/login, the tenant's form, the callback; the
    session cookie's value. Cookies go by hand: httpx keeps `Secure` ones from plain HTTP."""
    async with httpx.AsyncClient() as browser:
        login = await browser.get(f"{base}/auth/login", params={"return_to": "/"})
        assert login.status_code == 302, login.text
        tx = cookie_value(login, TX_COOKIE)
        back = urlsplit(await sign_in(browser, login.headers["location"], username))
        assert f"{back.scheme}://{back.netloc}" == base
        called = await browser.get(
            f"{base}{back.path}?{back.query}", headers={"Cookie": f"{TX_COOKIE}={tx}"}
        )
        assert called.status_code == 302, called.text
        assert called.headers["location"] == "/"
        return cookie_value(called, SESSION_COOKIE)
