"""Cookie mode in a real browser: `python -m app dev` started for real, its page at `/`
driven in Debian's Chromium through Playwright.

Sign in through the stand-in tenant's form, see the name, create a patient and see it
listed, sign out and see the API answer 401 (the old cookie too); sign in again, have the
tenant send a back-channel logout, and see the page signed out. The sessions' tokens are
DPoP-bound (SESSION_DPOP=true): the tenant counts a grant with a proof per sign-in.

Without /usr/bin/chromium (or the `playwright` package) the test skips, unless CI or
REQUIRE_BROWSER=1 (`.ci/run` sets both) says it must run: then it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.db import ProvisionedDatabase

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SESSION_COOKIE = "__Host-bff_session"
# Unusual on purpose: the server's log is searched for them afterwards.
GIVEN, FAMILY = "Quillonia", "Brackenthwaite"
STARTUP_SECONDS = 60
STEP_MS = 15_000


def _browser_or_skip() -> Any:
    """Playwright's async API, or a skip (a failure when CI or REQUIRE_BROWSER says so)."""
    ci = os.environ.get("CI", "").lower() not in ("", "0", "false")
    required = ci or os.environ.get("REQUIRE_BROWSER") == "1"
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        from playwright import async_api
    except ImportError:
        async_api = None
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        reason = "the browser test needs " + " and ".join(missing)
        if required:
            pytest.fail(f"{reason}; CI/REQUIRE_BROWSER=1 says it must run", pytrace=False)
        pytest.skip(reason)
    return async_api


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DevServer:
    base: str
    tenant: str
    log: Path


@contextlib.asynccontextmanager
async def dev_server(database: ProvisionedDatabase, workdir: Path) -> AsyncIterator[DevServer]:
    """`python -m app dev` on free ports against the test's database, until the banner."""
    port, tenant_port = _free_port(), _free_port()
    settings_prefixes = ("AUTH0_", "SESSION_", "PUBLIC_URL", "DATABASE_URL", "MIGRATIONS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(settings_prefixes)}
    env |= {"DATABASE_URL": database.app_url, "MIGRATIONS_DATABASE_URL": database.owner_url}
    env["SESSION_DPOP"] = "true"
    env["PYTHONPATH"] = str(REPO)
    log = workdir / "dev-server.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app",
            "dev",
            "--port",
            str(port),
            "--tenant-port",
            str(tenant_port),
            cwd=workdir,  # no .env from the checkout
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        banner: list[str] = []

        async def until_banner() -> None:
            while True:
                line = (await process.stdout.readline()).decode()  # type: ignore[union-attr]
                if not line:
                    raise AssertionError("the dev server stopped:\n" + log.read_text()[-3000:])
                banner.append(line)
                if line.strip().startswith("Stop with Ctrl+C"):
                    return

        await asyncio.wait_for(until_banner(), STARTUP_SECONDS)
        text = "".join(banner)
        base = f"http://127.0.0.1:{port}"
        assert f"{base}/" in text, f"the banner names no page:\n{text}"
        yield DevServer(base, f"http://127.0.0.1:{tenant_port}", log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _sign_in(page: Any, server: DevServer, username: str) -> None:
    """From the page: the sign-in link, the tenant's form, back on the page signed in."""
    await page.click("#signin")
    await page.wait_for_url(f"{server.tenant}/**", timeout=STEP_MS)
    await page.fill("input[name=username]", username)
    await page.click("form [type=submit]")
    await page.wait_for_url(f"{server.base}/", timeout=STEP_MS)
    await page.wait_for_selector("#who[data-state=signed-in]", timeout=STEP_MS)


async def _api_status(page: Any, path: str, *, csrf: bool = True) -> int:
    """The status a fetch from the page gets, with the cookie and (unless `csrf` is False)
    X-CSRF, as the page sends them."""
    status: int = await page.evaluate(
        """async ([path, csrf]) => (await fetch(path, {credentials: "same-origin",
                                   headers: csrf ? {"X-CSRF": "1"} : {}})).status""",
        [path, csrf],
    )
    return status


async def _session_cookie(context: Any) -> dict[str, Any] | None:
    cookies = await context.cookies()
    return next((c for c in cookies if c["name"] == SESSION_COOKIE), None)


async def _backchannel_logout(server: DevServer, sub: str) -> None:
    """Ask the stand-in tenant to end the user's tenant sessions and send the service an
    OIDC back-channel logout for them, as Auth0 does when a session ends there."""
    async with httpx.AsyncClient(base_url=server.tenant, timeout=10) as client:
        answer = await client.post("/dev/backchannel-logout", json={"sub": sub})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == 200, answer.text  # what the service answered


async def test_cookie_session_in_chromium(database: ProvisionedDatabase, tmp_path: Path) -> None:
    api = _browser_or_skip()
    started = time.monotonic()
    async with dev_server(database, tmp_path) as server, api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            refused: list[str] = []  # what the page's CSP blocked, from the console
            page.on(
                "console",
                lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
            )

            response = await page.goto(server.base + "/")
            assert response is not None and response.status == 200
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            await page.wait_for_selector("#who[data-state=signed-out]", timeout=STEP_MS)
            assert await page.is_visible("#signin")
            assert not await page.is_visible("#signout")
            assert await _api_status(page, "/api/patients") == 401

            # Signed in through the tenant's form: the name on the page, one HttpOnly cookie.
            await _sign_in(page, server, "alice")
            assert "alice" in (await page.text_content("#who") or "")
            cookie = await _session_cookie(context)
            assert cookie is not None, "no session cookie"
            assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Lax"
            assert cookie["path"] == "/" and not cookie["domain"].startswith(".")
            assert await page.evaluate("document.cookie") == "", "a cookie the page can read"
            assert await _api_status(page, "/api/patients", csrf=False) == 403
            session = await page.evaluate(
                """async () => (await fetch("/auth/session",
                    {credentials: "same-origin", headers: {"X-CSRF": "1"}})).json()"""
            )
            user = session["user"]
            assert user["sub"] == "auth0|alice" and user["name"] == "alice"
            assert session["idle_expires_at"] and session["absolute_expires_at"]
            assert "token" not in str(session).lower()

            # A bad body: the page shows the problem readably and nothing is listed.
            await page.fill("#given-name", GIVEN)
            await page.fill("#family-name", FAMILY)
            await page.fill("#birth-date", "2999-01-01")  # in the future: refused
            await page.click("#create")
            await page.wait_for_selector("#error:not([hidden])", timeout=STEP_MS)
            error = await page.text_content("#error") or ""
            assert "422" in error and "birth_date" in error, error
            assert await page.locator("#patients li").count() == 0

            # A patient created from the page, then listed.
            await page.fill("#birth-date", "1984-05-06")
            await page.click("#create")
            item = page.locator("#patients li", has_text=f"{FAMILY}, {GIVEN}")
            await item.wait_for(timeout=STEP_MS)
            assert "1984-05-06" in (await item.text_content() or "")
            assert not await page.is_visible("#error")

            # Signed out: the page says so, and the API refuses the browser and the old cookie.
            await page.click("#signout")
            await page.wait_for_url(f"{server.base}/", timeout=STEP_MS)
            await page.wait_for_selector("#who[data-state=signed-out]", timeout=STEP_MS)
            assert await _session_cookie(context) is None
            assert await _api_status(page, "/api/patients") == 401
            async with httpx.AsyncClient(base_url=server.base, timeout=10) as client:
                replay = await client.get(
                    "/api/patients",
                    headers={"Cookie": f"{SESSION_COOKIE}={cookie['value']}", "X-CSRF": "1"},
                )
            assert replay.status_code == 401

            # Signed in again; the tenant ends the session by back-channel: the page notices.
            await _sign_in(page, server, "alice")
            await item.wait_for(timeout=STEP_MS)  # the same user's patients again
            await _backchannel_logout(server, user["sub"])
            await page.click("#reload")
            await page.wait_for_selector("#who[data-state=signed-out]", timeout=STEP_MS)
            assert "session has ended" in (await page.text_content("#who") or "")
            await page.reload()
            await page.wait_for_selector("#who[data-state=signed-out]", timeout=STEP_MS)
            assert await page.is_visible("#signin")
            assert refused == [], refused
            async with httpx.AsyncClient(base_url=server.tenant, timeout=10) as client:
                counts = (await client.get("/dev/stats")).json()
            assert counts.get("dpop_grant") == 2, counts  # both sign-ins bound their tokens
        finally:
            await browser.close()

    # Neither the patient's values nor the session cookie reached the server's log.
    log = server.log.read_text(errors="replace")
    assert GIVEN not in log and FAMILY not in log
    assert cookie["value"] not in log
    print(f"browser test: {time.monotonic() - started:.1f} s")


async def test_a_remote_api_call_from_the_page(
    database: ProvisionedDatabase, tmp_path: Path
) -> None:
    """The page calls `/remote/labs/whoami`: the stand-in lab system answers who called it
    with a token for its own audience (got with the session's refresh token, DPoP-bound),
    and no token reaches the page, its storage or the server's log."""
    api = _browser_or_skip()
    async with dev_server(database, tmp_path) as server, api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            seen: list[str] = []  # every body the page received
            page.on("response", lambda r: seen.append(r.url))
            await page.goto(server.base + "/")
            await page.wait_for_selector("#who[data-state=signed-out]", timeout=STEP_MS)
            assert not await page.is_visible("#remote-call")
            assert await _api_status(page, "/remote/labs/whoami") == 401

            await _sign_in(page, server, "alice")
            await page.click("#remote-call")
            await page.wait_for_selector("#remote-result[data-state=done]", timeout=STEP_MS)
            shown = await page.text_content("#remote-result") or ""
            assert "auth0|alice" in shown and "https://labs.bff.local" in shown, shown
            assert "DPoP token" in shown, shown
            assert await _api_status(page, "/remote/labs/whoami", csrf=False) == 403

            answer = await page.evaluate(
                """async () => await (await fetch("/remote/labs/whoami",
                    {credentials: "same-origin", headers: {"X-CSRF": "1"}})).text()"""
            )
            assert "eyJ" not in answer  # no JWT in what the browser gets
            html = await page.content()
            assert "eyJ" not in html
            storage = await page.evaluate("JSON.stringify({...localStorage, ...sessionStorage})")
            assert "eyJ" not in storage
            assert any("/remote/labs/whoami" in url for url in seen)
        finally:
            await browser.close()
    log = server.log.read_text(errors="replace")
    assert "eyJ" not in log  # no token (every JWT starts so) in the server's log
