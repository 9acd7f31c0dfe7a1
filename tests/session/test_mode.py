"""Cookie mode off: /auth/* is a 404 and a session cookie means nothing. On: /openapi.json
documents /auth/*. Ends reach every copy of the service."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest
import respx

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.fixtures.standin import StandIn
from tests.helpers import assert_problem
from tests.session.support import login, with_cookie


@pytest.fixture
def off(database: ProvisionedDatabase, tenant: respx.MockRouter) -> Settings:
    return make_settings(database)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/auth/login"),
        ("GET", "/auth/callback?code=x&state=y"),
        ("GET", "/auth/session"),
        ("POST", "/auth/logout"),
        ("POST", "/auth/backchannel-logout"),
    ],
)
async def test_with_cookie_mode_off_auth_paths_are_404(
    off: Settings, method: str, path: str
) -> None:
    async with running_app(off) as app:
        response = await app.request(method, path, headers={"X-CSRF": "1"})
    assert_problem(response, 404)


async def test_with_cookie_mode_off_a_session_cookie_is_no_credential(off: Settings) -> None:
    async with running_app(off) as app:
        response = await app.get("/api/patients", headers=with_cookie("A" * 43))
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    assert "set-cookie" not in response.headers


async def test_openapi_documents_the_auth_routes(app: httpx.AsyncClient) -> None:
    spec = (await app.get("/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths) >= {
        "/auth/login",
        "/auth/callback",
        "/auth/session",
        "/auth/logout",
        "/auth/backchannel-logout",
    }
    assert {p["name"] for p in paths["/auth/login"]["get"]["parameters"]} >= {
        "return_to",
        "screen_hint",
        "organization",
        "connection",
    }
    session = paths["/auth/session"]["get"]
    assert session["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SessionInfo"
    }
    assert "X-CSRF" in [p["name"] for p in session["parameters"]]
    assert {"401", "403"} <= set(paths["/auth/logout"]["post"]["responses"])


async def test_a_logout_on_one_copy_reaches_a_copy_that_cached_the_session(
    settings: Settings, owner: asyncpg.Connection, standin: StandIn
) -> None:
    async with running_app(settings) as one, running_app(settings) as two:
        cookie = await login(one)
        assert (await two.get("/api/patients", headers=with_cookie(cookie))).status_code == 200
        assert (await one.post("/auth/logout", headers=with_cookie(cookie))).status_code == 200
        # Copy two heard of it through LISTEN/NOTIFY; give the notification time to arrive.
        deadline = time.monotonic() + 10
        while True:
            response = await two.get("/api/patients", headers=with_cookie(cookie))
            if response.status_code != 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert_problem(response, 401)
