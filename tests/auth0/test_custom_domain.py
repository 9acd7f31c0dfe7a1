"""A tenant with a custom domain: tokens are issued by the custom domain (AUTH0_DOMAIN: the
issuer, the JWKS, the Authentication API), while the Management API accepts only tokens for
its audience on the canonical domain (AUTH0_MANAGEMENT_DOMAIN), which are asked of that
domain and used there. Both domains are stubbed with respx; a request to any other host
fails the test."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
import respx

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from devkit.keys import ALL_PERMISSIONS, SigningKey, TokenMinter
from tests.fixtures.app import account_app
from tests.fixtures.settings import make_settings
from tests.fixtures.tenant import AUDIENCE, CLIENT_ID, CLIENT_SECRET
from tests.helpers import bearer

CUSTOM = "login.hospital.test"
CANONICAL = "hospital-prod.eu.auth0.com"
USER = "auth0|nurse-1"
TARGET = "auth0|target-1"
PROFILE = {
    "user_id": USER,
    "email": "nurse@hospital.test",
    "email_verified": True,
    "name": "Nurse One",
    "nickname": "nurse",
    "updated_at": "2026-11-01T00:00:00.000Z",
}


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(
        database,
        auth0_domain=CUSTOM,
        auth0_management_domain=CANONICAL,
        auth0_base_url=None,  # the real hosts: nothing stands in for the tenant
    )


@pytest.fixture
def minter(signing_key: SigningKey) -> TokenMinter:
    return TokenMinter(CUSTOM, AUDIENCE, keys=[signing_key])


@pytest.fixture
def domains(minter: TokenMinter) -> respx.MockRouter:
    router = respx.mock(assert_all_called=False, assert_all_mocked=True)
    custom, canonical = f"https://{CUSTOM}", f"https://{CANONICAL}"
    router.get(f"{custom}/.well-known/jwks.json").mock(
        side_effect=lambda request: httpx.Response(200, json=minter.jwks())
    )
    router.post(f"{custom}/dbconnections/change_password").respond(200, text="sent")
    router.post(f"{canonical}/oauth/token").respond(
        200, json={"access_token": "m2m-token", "token_type": "Bearer", "expires_in": 86400}
    )
    router.get(url__regex=rf"^{canonical}/api/v2/users/[^/]+$").respond(200, json=PROFILE)
    router.patch(url__regex=rf"^{canonical}/api/v2/users/[^/]+$").respond(
        200, json={**PROFILE, "nickname": "night-shift"}
    )
    router.get(url__regex=rf"^{canonical}/api/v2/users/[^/]+/roles").respond(
        200, json={"roles": [], "start": 0, "limit": 100, "total": 0}
    )
    return router


@pytest.fixture
async def mocked(domains: respx.MockRouter) -> AsyncIterator[respx.MockRouter]:
    with domains:
        yield domains


async def test_the_management_api_stays_on_the_canonical_domain(
    settings: Settings, mocked: respx.MockRouter, minter: TokenMinter
) -> None:
    token = bearer(minter.mint(USER, permissions=ALL_PERMISSIONS, email_verified=True))
    async with account_app(settings) as running:
        http = running.http
        assert (await http.get("/api/profile", headers=token)).status_code == 200
        changed = await http.patch("/api/profile", json={"nickname": "night-shift"}, headers=token)
        assert changed.status_code == 200, changed.text
        roles = await http.get(f"/api/admin/users/{quote(TARGET, safe='')}/roles", headers=token)
        assert roles.status_code == 200, roles.text
        reset = await http.post("/api/account/password-reset", json={"email": "nurse@example.com"})
        assert reset.status_code == 202
        await running.services.after_response.drain()

    calls = [(c.request.method, c.request.url) for c in mocked.calls]
    # The custom domain: the signing keys (once) and the Authentication API, nothing else.
    assert [(m, u.path) for m, u in calls if u.host == CUSTOM] == [
        ("GET", "/.well-known/jwks.json"),
        ("POST", "/dbconnections/change_password"),
    ]
    # The canonical domain: the M2M token (once), then every Management API call.
    canonical = [(m, u.path) for m, u in calls if u.host == CANONICAL]
    assert canonical[0] == ("POST", "/oauth/token")
    management = canonical[1:]
    assert [m for m, _ in management] == ["GET", "PATCH", "GET"]
    assert all(path.startswith("/api/v2/users/") for _, path in management)
    assert not [u for _, u in calls if u.path.startswith("/api/v2") and u.host != CANONICAL]
    assert {url.host for _, url in calls} == {CUSTOM, CANONICAL}

    [grant] = [c.request for c in mocked.calls if c.request.url.path == "/oauth/token"]
    assert json.loads(grant.content) == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "audience": f"https://{CANONICAL}/api/v2/",
    }
    for call in mocked.calls:
        if call.request.url.path.startswith("/api/v2/"):
            assert call.request.headers["authorization"] == "Bearer m2m-token"


async def test_tokens_of_the_canonical_domain_are_not_accepted(
    settings: Settings, mocked: respx.MockRouter, signing_key: SigningKey
) -> None:
    """Users' tokens are issued by the custom domain; the canonical one is not their issuer."""
    other = TokenMinter(CANONICAL, AUDIENCE, keys=[signing_key])
    async with account_app(settings) as running:
        response = await running.http.get(
            "/api/me", headers=bearer(other.mint(USER, email_verified=True))
        )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "invalid issuer"
    assert not [c for c in mocked.calls if c.request.url.host == CANONICAL]
