"""The console in a real browser: `python -m app dev` started for real, driven in Debian's
Chromium through Playwright (tests/dev/test_browser.py starts the server and says when the
test skips).

An auditor signs in through the stand-in tenant's form (sent there by the console itself),
filters the log to one patient, checks an event's inclusion proof in the page (verified
against the checkpoint; a proof tampered on the way fails; without WebCrypto's Ed25519 the
page shows the offline command), opens that patient's access report, downloads its CSV and
finds the API's rows in it; a clinician without `read:audit_events` gets 403 pages; an
organisation admin grants and revokes a member's role and ends her session, whose cookie then
gets 401. Along the way: no Content-Security-Policy violation, no console error, no request
to another host, axe-core finds no serious or critical violation, the pages read at 390 px
without sideways scrolling, and the first Tab reaches the skip link.
"""

from __future__ import annotations

import base64
import csv
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from axe_playwright_python.async_playwright import Axe

from app.audit.digests import issue_digest
from app.audit.signing import KeyRing, ScopeNames
from app.core.db import asyncpg_dsn
from devkit.db import ProvisionedDatabase
from devkit.keys import dev_audit_keys
from tests.dev import test_browser as dev

# Run before the page's script, as a browser without Ed25519 in WebCrypto would behave.
NO_ED25519 = """
const generate = crypto.subtle.generateKey.bind(crypto.subtle);
crypto.subtle.generateKey = (algorithm, ...rest) =>
  (algorithm && algorithm.name === "Ed25519")
    ? Promise.reject(new DOMException("Unrecognized name.", "NotSupportedError"))
    : generate(algorithm, ...rest);
"""
PATIENT = {"given_name": "Quillonia", "family_name": "Brackenthwaite", "birth_date": "1984-05-06"}


class Watch:
    """What a page did that it should not: console errors, CSP reports, other hosts."""

    def __init__(self, base: str, tenant: str) -> None:
        self.allowed = {urlsplit(base).netloc, urlsplit(tenant).netloc}
        self.problems: list[str] = []

    def attach(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("request", self._request)
        page.on("response", self._response)

    def _response(self, response: Any) -> None:
        if response.status >= 400 and response.status != 403:  # 403: the pages asked for
            self.problems.append(f"{response.status} for {response.url}")

    def _console(self, message: Any) -> None:
        # A 403 page is an error to the browser too; the responses are checked themselves.
        expected = "status of 403" in message.text
        if (message.type == "error" and not expected) or "Content Security Policy" in message.text:
            self.problems.append(f"console {message.type}: {message.text}")

    def _request(self, request: Any) -> None:
        host = urlsplit(request.url).netloc
        if urlsplit(request.url).scheme in ("http", "https") and host not in self.allowed:
            self.problems.append(f"request to another host: {request.url}")


async def _sign_in_at(
    page: Any, server: dev.DevServer, path: str, username: str, *, back: str | None = None
) -> None:
    """Open a page signed out: the tenant's form, then back on that page (or `back`)."""
    await page.goto(server.base + path)
    await page.wait_for_url(f"{server.tenant}/**", timeout=dev.STEP_MS)
    await page.fill("input[name=username]", username)
    await page.click("form [type=submit]")
    await page.wait_for_url(f"{server.base}{back or path}", timeout=dev.STEP_MS)


async def _api(page: Any, method: str, path: str, body: Any = None) -> Any:
    """A call from the page with the cookie and X-CSRF: 1: `[status, text]`."""
    return await page.evaluate(
        """async ([method, path, body]) => {
            const init = {method, credentials: "same-origin", headers: {"X-CSRF": "1"}};
            if (body !== null) {
                init.headers["Content-Type"] = "application/json";
                init.body = JSON.stringify(body);
            }
            const response = await fetch(path, init);
            return [response.status, await response.text()];
        }""",
        [method, path, body],
    )


async def _checkpoint(database: ProvisionedDatabase) -> None:
    """A digest and its checkpoints now, signed with the dev server's keys (as its digest
    issuer would sign them at the next interval)."""
    signing_key, scope_key = dev_audit_keys(database.app_url)
    conn = await asyncpg.connect(asyncpg_dsn(database.app_url))
    try:
        ring, names = KeyRing.from_setting(signing_key), ScopeNames.from_setting(scope_key)
        assert (await issue_digest(conn, ring, names)).issued is not None
    finally:
        await conn.close()


async def _tampered(route: Any) -> None:
    """The proof as served, one byte of its first path hash flipped."""
    response = await route.fetch()
    proof = await response.json()
    assert proof["audit_path"], "a tree of one event has no path to tamper with"
    first = bytearray(base64.b64decode(proof["audit_path"][0]))
    first[0] ^= 1
    proof["audit_path"][0] = base64.b64encode(bytes(first)).decode()
    await route.fulfill(response=response, json=proof)


async def _proof_status(page: Any) -> str:
    await page.click("#check-proof")
    done = re.compile(r"^(Verified|Path verified|Check failed|Not checked)")
    await page.locator("#proof-status", has_text=done).wait_for(timeout=dev.STEP_MS)
    return (await page.text_content("#proof-status")) or ""


async def _accessible(page: Any) -> None:
    results = await Axe().run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], f"{page.url}: {bad}"


async def _fits(page: Any, width: int) -> None:
    scroll = await page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{page.url} scrolls sideways at {width} px ({scroll} px)"


async def test_the_console_in_chromium(database: ProvisionedDatabase, tmp_path: Path) -> None:
    api = dev._browser_or_skip()
    async with dev.dev_server(database, tmp_path) as server, api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(dev.CHROMIUM), headless=True)
        try:
            watch = Watch(server.base, server.tenant)
            context = await browser.new_context(accept_downloads=True)
            page = await context.new_page()
            watch.attach(page)

            # The auditor: sent to sign in by the console, back on the log.
            await _sign_in_at(page, server, "/console/audit", "alice")
            assert await page.text_content("#who") == "auth0|alice"
            status, text = await _api(page, "POST", "/api/patients", PATIENT)
            assert status == 201, text
            patient_id = text.split('"id":"')[1].split('"')[0]
            status, _ = await _api(page, "GET", f"/api/patients/{patient_id}")
            assert status == 200
            await page.keyboard.press("Tab")
            assert await page.evaluate("document.activeElement.className") == "skip"

            # Filtered to the patient: its events, each time also in the browser's timezone.
            await page.fill("#f-patient", patient_id)
            await page.click("#apply")
            await page.wait_for_selector("#report-link", timeout=dev.STEP_MS)
            actions = await page.locator("#events tbody td:nth-child(2)").all_text_contents()
            assert sorted(actions) == ["patient.created", "patient.read"]
            assert await page.locator("#events time + .local").count() == 2
            await _accessible(page)

            # One event: its request id and hash, and its proof checked in the page against
            # the checkpoint issued now; the same proof with a byte flipped on the way fails.
            await page.click("#events tbody a[aria-label^=Event]")
            await page.wait_for_selector("#hash", timeout=dev.STEP_MS)
            assert len(await page.text_content("#hash") or "") == 64
            event_path = urlsplit(page.url).path
            await _checkpoint(database)
            verdict = await _proof_status(page)
            assert re.match(r"Verified against checkpoint \d+ \(size \d+\): leaf", verdict), verdict
            assert "signed by" in verdict and await page.is_hidden("#proof-offline")
            await _accessible(page)
            await page.route(re.compile(r"/inclusion\?"), _tampered)
            verdict = await _proof_status(page)
            assert verdict == "Check failed: the proof does not lead to the checkpoint's root."
            await page.unroute(re.compile(r"/inclusion\?"))
            # A browser without WebCrypto's Ed25519: the path is checked, the page shows
            # the offline command for the signature.
            await page.add_init_script(NO_ED25519)
            await page.reload()
            verdict = await _proof_status(page)
            assert verdict.startswith("Path verified against checkpoint"), verdict
            assert "signature is checked offline" in verdict
            assert await page.is_visible("#proof-offline")
            assert "python -m app audit verify-inclusion" in (
                await page.text_content("#proof-offline") or ""
            )
            await _accessible(page)
            await page.go_back()

            # The access report, its CSV, and the API's rows in it.
            await page.click("#report-link")
            await page.wait_for_selector("#count", timeout=dev.STEP_MS)
            today = datetime.now(UTC).date().isoformat()
            assert await page.text_content(f"#d-{today}") == today
            await _accessible(page)
            async with page.expect_download() as info:
                await page.click("#csv")
            download = await info.value
            saved = tmp_path / "report.csv"
            await download.save_as(saved)
            ours = list(csv.reader(io.StringIO(saved.read_text())))
            now = datetime.now(UTC)
            window = (
                f"since={(now - timedelta(hours=1)).strftime('%Y-%m-%dT%H:%M:%SZ')}"
                f"&until={(now + timedelta(minutes=1)).strftime('%Y-%m-%dT%H:%M:%SZ')}"
            )
            status, exported = await _api(
                page,
                "GET",
                f"/api/audit-events/export?format=csv&patient_id={patient_id}&{window}",
            )
            assert status == 200, exported
            theirs = list(csv.reader(io.StringIO(exported)))
            assert len(ours) > 2 and ours == theirs[: len(ours)]
            actions = [row[5] for row in ours[1:]]
            assert actions[:2] == ["patient.created", "patient.read"]

            # Integrity and activity: the chain intact, three charts, no serious violation.
            await page.goto(server.base + "/console/integrity")
            assert (await page.text_content("#chain-status") or "").strip().startswith("Intact")
            await _accessible(page)
            await page.goto(server.base + "/console/activity")
            assert await page.locator("svg.chart").count() == 3
            await _accessible(page)

            # At 390 px: nothing scrolls sideways.
            await page.set_viewport_size({"width": 390, "height": 844})
            for path in (
                "/console/",
                "/console/audit",
                f"/console/patients/{patient_id}/access",
                event_path,
                "/console/integrity",
                "/console/activity",
            ):
                await page.goto(server.base + path)
                await _fits(page, 390)
            await _accessible(page)

            # The clinician: signed in, 403 pages and no event of the log.
            clinician = await browser.new_context()
            other = await clinician.new_page()
            watch.attach(other)
            await _sign_in_at(other, server, "/console/", "clinician")
            for path in ("/console/audit", f"/console/patients/{patient_id}/access"):
                response = await other.goto(server.base + path)
                assert response is not None and response.status == 403, path
                assert await other.is_visible("#forbidden")
                assert "patient.read" not in await other.content()
            await _accessible(other)

            # The organisation admin: grants and revokes a role, ends carol's session.
            carol = await (await browser.new_context()).new_page()
            watch.attach(carol)
            into_org = "/auth/login?organization=org_dev&return_to=/console/"
            await _sign_in_at(carol, server, into_org, "carol", back="/console/")
            admin = await (await browser.new_context()).new_page()
            watch.attach(admin)
            await _sign_in_at(
                admin,
                server,
                into_org.replace("/console/", "/console/members"),
                "admin",
                back="/console/members",
            )
            await _accessible(admin)
            await admin.click("a[href='/console/members/auth0%7Ccarol']")
            await admin.wait_for_selector("#roles", timeout=dev.STEP_MS)
            await _accessible(admin)
            await admin.select_option("#grant-role", "rol_Doctor")
            await admin.click("#grant")
            await admin.wait_for_selector("button[data-role=rol_Doctor]", timeout=dev.STEP_MS)
            await admin.click("button[data-role=rol_Doctor]")
            await admin.wait_for_selector(
                "button[data-role=rol_Doctor]", state="detached", timeout=dev.STEP_MS
            )
            assert await admin.locator("button[data-role=rol_Nurse]").count() == 1
            status, _ = await _api(carol, "GET", "/api/me")
            assert status == 200
            await admin.click("button.end")
            await admin.wait_for_selector("button.end", state="detached", timeout=dev.STEP_MS)
            assert watch.problems == [], watch.problems
            status, _ = await _api(carol, "GET", "/api/me")
            assert status == 401  # (the browser logs this 401 as an error, as it should)
        finally:
            await browser.close()
