"""`/docs`: Swagger UI from the service's own files, under a strict Content-Security-Policy.

Over HTTP: every asset the page references loads from the service with its content type
and a long cache, nothing points elsewhere, unknown or unlisted files are 404. In Chromium
(through Playwright) against `python -m app dev`: the page renders every operation without
a single CSP violation or script error, talks to nobody else, and "Authorize" with the
printed token makes "Try it out" on GET /api/me answer 200 (401 without it).

Without /usr/bin/chromium (or the `playwright` package) the browser test skips, unless CI
or REQUIRE_BROWSER=1 says it must run: then it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.http.explorer import EXPLORER_CSP, EXPLORER_JS
from app.http.middleware import Metrics, RequestContextMiddleware
from devkit.db import ProvisionedDatabase
from tests.helpers import assert_problem

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}


class _References(HTMLParser):
    """Every `src` and `href` in a page, with the tag that holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self.inline_code: list[str] = []  # inline scripts and on* handlers
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.found.append((tag, value))
            if name.startswith("on"):
                self.inline_code.append(f"{tag} {name}")
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_code.append(data)


def parse(page: str) -> _References:
    parser = _References()
    parser.feed(page)
    return parser


def references(page: str) -> list[tuple[str, str]]:
    return parse(page).found


class TestPage:
    async def test_every_asset_it_references_loads_from_the_service(
        self, client: httpx.AsyncClient
    ) -> None:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        found = references(page.text)
        scripts = [url for tag, url in found if tag == "script"]
        styles = [url for tag, url in found if tag == "link"]
        assert len(scripts) == 2 and len(styles) == 3  # bundle + starter; css + two icons
        assets = [url for tag, url in found if tag in ("script", "link")]
        for url in assets:
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc, url  # this origin, nothing else
            response = await client.get(url)
            assert response.status_code == 200, url
            suffix = Path(parts.path).suffix
            assert response.headers["content-type"] == CONTENT_TYPES[suffix], url
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert response.content, url
        for url in [url for tag, url in found if tag == "a"]:  # the no-script links
            assert (await client.get(url)).status_code == 200, url
        starter = await client.get(scripts[-1])
        assert starter.content == EXPLORER_JS
        assert b'url: "/openapi.json"' in starter.content

    async def test_references_no_other_host(self, client: httpx.AsyncClient) -> None:
        page = (await client.get("/docs")).text
        assert not re.search(r"(?i)\b(?:https?:)?//", page)  # no absolute or protocol-relative URL
        assert parse(page).inline_code == []  # what the policy would block anyway

    async def test_sends_the_explorer_policy_and_the_usual_headers(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/docs")
        assert response.headers.get_list("content-security-policy") == [EXPLORER_CSP]
        policy = dict(d.strip().split(" ", 1) for d in EXPLORER_CSP.split(";"))
        assert policy == {
            "default-src": "'none'",
            "script-src": "'self'",  # no 'unsafe-inline', no 'unsafe-eval'
            "style-src": "'self'",
            "img-src": "'self' data:",
            "connect-src": "'self'",
            "base-uri": "'none'",
            "form-action": "'none'",
            "frame-ancestors": "'none'",
        }
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"

    async def test_other_responses_keep_the_default_policy(self, client: httpx.AsyncClient) -> None:
        for path in ("/healthz", "/docs/table", "/openapi.json"):
            policy = (await client.get(path)).headers["content-security-policy"]
            assert policy == "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"

    async def test_the_description_offers_the_bearer_scheme_to_authorize(
        self, client: httpx.AsyncClient
    ) -> None:
        spec = (await client.get("/openapi.json")).json()
        assert spec["components"]["securitySchemes"]["bearerAuth"] == {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An Auth0 access token for this API's audience.",
        }
        assert spec["paths"]["/api/me"]["get"]["security"] == [{"bearerAuth": []}, {"dpop": []}]
        assert "security" not in spec["paths"]["/healthz"]["get"]

    async def test_the_plain_table_is_still_served(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/docs/table")
        assert response.status_code == 200
        assert "<table>" in response.text and "<script" not in response.text


class TestAssets:
    @pytest.mark.parametrize(
        "name",
        [
            "index.html",  # in the package, with an inline script and the petstore URL
            "swagger-initializer.js",  # in the package, pointing at petstore.swagger.io
            "swagger-ui-bundle.js.map",
            "..%2F..%2Fexplorer.py",
            "..%2Fswagger_ui_bundle%2F__init__.py",
            "nothing.js",
        ],
    )
    async def test_only_the_listed_files_are_served(
        self, client: httpx.AsyncClient, name: str
    ) -> None:
        body = assert_problem(await client.get(f"/docs/static/{name}"), 404)
        assert body["title"] == "Not Found"

    async def test_head_answers_like_get_without_a_body(self, client: httpx.AsyncClient) -> None:
        response = await client.head("/docs/static/swagger-ui.css?v=1")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/css; charset=utf-8"
        assert int(response.headers["content-length"]) > 100_000
        assert response.content == b""

    async def test_a_wrong_method_is_405(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.post("/docs/static/swagger-ui.css"), 405)


class TestOwnPolicyWins:
    """The envelope adds its default policy only to a response without one of its own."""

    async def test_a_response_with_its_own_policy_keeps_it_alone(self) -> None:
        async def page(request: Request) -> Response:
            return Response("x", headers={"Content-Security-Policy": "script-src 'self'"})

        async def plain(request: Request) -> Response:
            return Response("x")

        app = RequestContextMiddleware(
            Starlette(routes=[Route("/page", page), Route("/plain", plain)]),
            metrics=Metrics(),
            max_body_bytes=1024,
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            own = await http.get("/page")
            default = await http.get("/plain")
        assert own.headers.get_list("content-security-policy") == ["script-src 'self'"]
        assert default.headers.get_list("content-security-policy") == [
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
        ]
        assert own.headers["x-frame-options"] == "DENY"  # the other defaults still apply


# --- in Chromium, against python -m app dev --------------------------------------------


def _browser_or_skip() -> Any:
    """Playwright's async API, or a skip (a failure when CI or REQUIRE_BROWSER says so)."""
    required = os.environ.get("REQUIRE_BROWSER") == "1" or bool(os.environ.get("CI"))
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        from playwright import async_api
    except ImportError:
        async_api = None
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        reason = "the explorer's browser test needs " + " and ".join(missing)
        if required:
            pytest.fail(f"{reason}; CI/REQUIRE_BROWSER=1 says it must run", pytrace=False)
        pytest.skip(reason)
    return async_api


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def dev_server(
    database: ProvisionedDatabase, workdir: Path
) -> AsyncIterator[tuple[str, str]]:
    """`python -m app dev` on the test's database; yields (base URL, the printed token)."""
    prefixes = ("AUTH0_", "SESSION_", "PUBLIC_URL", "DATABASE_URL", "MIGRATIONS_", "PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env |= {"DATABASE_URL": database.app_url, "MIGRATIONS_DATABASE_URL": database.owner_url}
    env["PYTHONPATH"] = str(REPO)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "dev",
        "--port",
        str(_free_port()),
        cwd=workdir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(90):
            while line := (await process.stdout.readline()).decode():
                match = re.search(r'Bearer ([^"]+)" (\S+)/api/me', line)
                if match:
                    break
            else:
                raise AssertionError("python -m app dev printed no curl line")
        drain = asyncio.create_task(process.stdout.read())  # keep its pipe from filling
        yield match.group(2), match.group(1)
        drain.cancel()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(30):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.mark.slow  # about 20 s: the dev server, its tenant and a browser start
async def test_the_explorer_authorizes_and_tries_a_call_in_chromium(
    database: ProvisionedDatabase, tmp_path: Path
) -> None:
    async_api = _browser_or_skip()
    async with dev_server(database, tmp_path) as (base, token), async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            problems: list[str] = []
            hosts: set[str] = set()
            sent: list[str | None] = []
            page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
            expected_401 = "the server responded with a status of 401"  # the first try
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console: {m.text}")
                    if m.type == "error" and expected_401 not in m.text
                    else None
                ),
            )
            page.on("request", lambda r: hosts.add(urlsplit(r.url).netloc))
            page.on(
                "request",
                lambda r: (
                    sent.append(r.headers.get("authorization"))
                    if urlsplit(r.url).path == "/api/me"
                    else None
                ),
            )
            await page.add_init_script(
                "document.addEventListener('securitypolicyviolation', e => console.error("
                "'CSP violation', e.violatedDirective, e.blockedURI))"
            )
            await page.goto(f"{base}/docs")
            await page.wait_for_selector(".opblock", timeout=30_000)
            async with httpx.AsyncClient() as http:
                spec = (await http.get(f"{base}/openapi.json")).json()
            # One block per operation and tag (an operation with two tags is listed twice).
            listed = sum(
                len(op.get("tags") or ["default"])
                for methods in spec["paths"].values()
                for op in methods.values()
            )
            assert await page.locator(".opblock").count() == listed

            me = page.locator("#operations-flows-get_me")
            status = me.locator(".live-responses-table tbody .response-col_status").first

            async def execute() -> str:
                await me.locator("button.execute").click()
                await status.wait_for(timeout=15_000)
                return str(await status.inner_text()).strip()

            await me.locator(".opblock-summary").click()
            await me.locator("button.try-out__btn").click()
            assert await execute() == "401"  # not authorized yet

            await page.click("button.authorize")
            await page.fill(".modal-ux input", token)
            await page.click(".modal-ux button.authorize")
            await page.click(".modal-ux button.close-modal")
            await me.locator("button.btn-clear").click()
            assert await execute() == "200"
            body = me.locator(".live-responses-table tbody .response-col_description pre").first
            assert '"auth0|dev-user"' in await body.inner_text()
            assert sent == [None, f"Bearer {token}"]

            assert problems == []
            assert hosts == {urlsplit(base).netloc}
            stored = await page.evaluate("JSON.stringify(localStorage) + document.cookie")
            assert token not in stored  # the token lives in the page's memory only
        finally:
            await browser.close()
