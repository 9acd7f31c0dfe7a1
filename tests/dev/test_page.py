"""The development page at `/`: served by `python -m app dev` only, with its own
Content-Security-Policy, no inline script, its files shipped as package data.
(tests/dev/test_browser.py drives it in Chromium.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager

from app.core.settings import Settings
from app.main import create_app
from devkit.page import PAGE_CSP, add_page, page_routes

STATIC = Path(__file__).resolve().parents[2] / "devkit" / "static"


@pytest.fixture
async def dev_client(
    settings: Settings, tenant: respx.MockRouter
) -> AsyncIterator[httpx.AsyncClient]:
    """The service as `python -m app dev` serves it: with the page in front."""
    app = add_page(create_app(settings))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@pytest.mark.parametrize("path", ["/", "/page/app.js", "/page/app.css"])
async def test_the_service_alone_serves_no_page(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_dev_serves_the_page_with_its_own_policy(dev_client: httpx.AsyncClient) -> None:
    page = await dev_client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert csp == PAGE_CSP  # the page's own, not the API's default-src 'none'
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    # The envelope's other headers still apply.
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    for element in ("who", "signin", "signout", "patients", "create-form", "error"):
        assert f'id="{element}"' in page.text
    assert 'href="/auth/login?return_to=/"' in page.text

    script = await dev_client.get("/page/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert '"X-CSRF": "1"' in script.text and 'credentials: "same-origin"' in script.text
    style = await dev_client.get("/page/app.css")
    assert style.headers["content-type"] == "text/css; charset=utf-8"


async def test_the_page_is_not_part_of_the_api_description(dev_client: httpx.AsyncClient) -> None:
    paths = (await dev_client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/page/") for p in paths)


async def test_the_page_takes_no_other_method(dev_client: httpx.AsyncClient) -> None:
    response = await dev_client.post("/", content=b"x")
    assert response.status_code == 405


def test_the_page_runs_no_inline_script() -> None:
    """What `script-src 'self'` would block anyway, caught before a browser does."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I)
    assert scripts, "no script at all"
    assert all('src="/page/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I), "an inline event handler"
    assert "javascript:" not in html.lower()
    assert "<style" not in html.lower() and "style=" not in html.lower()


def test_the_page_files_are_what_the_page_serves() -> None:
    served = {route.path: route for route in page_routes()}
    assert set(served) == {"/", "/page/app.js", "/page/app.css"}
    assert {p.name for p in STATIC.iterdir()} >= {"index.html", "app.js", "app.css"}
