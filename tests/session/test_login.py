"""GET /auth/login: the redirect to the tenant, and the sign-in kept server-side."""

from __future__ import annotations

import base64
import hashlib

import asyncpg
import httpx
import pytest

from app.session.cookies import TX_COOKIE
from app.session.crypto import TokenBox
from tests.fixtures.standin import SESSION_CLIENT_ID
from tests.fixtures.tenant import AUDIENCE, TENANT_URL
from tests.helpers import assert_problem
from tests.session.support import ENCRYPTION_KEY, PUBLIC_URL, set_cookies, start_login


async def test_redirects_to_the_tenant_with_pkce_state_and_nonce(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    started = await start_login(app, return_to="/patients?page=2")
    assert started.authorize_url.startswith(f"{TENANT_URL}/authorize?")
    params = started.params
    assert params["response_type"] == "code"
    assert params["client_id"] == SESSION_CLIENT_ID
    assert params["redirect_uri"] == f"{PUBLIC_URL}/auth/callback"
    assert params["scope"] == "openid profile email offline_access"
    assert params["audience"] == AUDIENCE
    assert params["code_challenge_method"] == "S256"
    assert len(params["state"]) >= 32 and len(params["nonce"]) >= 32
    assert params["state"] != params["nonce"]

    row = await owner.fetchrow("SELECT * FROM login_transactions")
    assert row["state"] == params["state"] and row["nonce"] == params["nonce"]
    assert row["return_to"] == "/patients?page=2"
    verifier = TokenBox(ENCRYPTION_KEY).open(row["code_verifier"])
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    assert params["code_challenge"] == challenge.rstrip(b"=").decode()
    assert verifier.encode() not in bytes(row["code_verifier"])  # stored encrypted
    # The transaction's cookie is stored only as its hash.
    assert bytes(row["cookie_hash"]) == hashlib.sha256(started.tx_cookie.encode()).digest()


async def test_transaction_cookie_is_host_only_secure_httponly_lax(app: httpx.AsyncClient) -> None:
    response = await app.get("/auth/login")
    line = set_cookies(response)[TX_COOKIE]
    attributes = [part.strip() for part in line.split(";")[1:]]
    assert sorted(attributes) == sorted(
        ["Max-Age=600", "Path=/", "Secure", "HttpOnly", "SameSite=Lax"]
    )
    assert response.headers["cache-control"] == "no-store"


async def test_passes_signup_organization_and_connection_through(app: httpx.AsyncClient) -> None:
    started = await start_login(
        app, screen_hint="signup", organization="org_abc123", connection="google-oauth2"
    )
    params = started.params
    assert params["screen_hint"] == "signup"
    assert params["organization"] == "org_abc123"
    assert params["connection"] == "google-oauth2"


@pytest.mark.parametrize(
    "return_to",
    [
        "https://evil.example/",
        "//evil.example/path",
        "/\\evil.example",
        "evil.example",
        "javascript:alert(1)",
        "/path with space",
        "",
    ],
)
async def test_a_return_to_that_is_not_a_relative_path_is_400(
    app: httpx.AsyncClient, owner: asyncpg.Connection, return_to: str
) -> None:
    response = await app.get("/auth/login", params={"return_to": return_to})
    assert_problem(response, 400, "return_to")
    assert TX_COOKIE not in set_cookies(response)
    assert await owner.fetchval("SELECT count(*) FROM login_transactions") == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"screen_hint": "login"}, "screen_hint"),
        ({"organization": "org abc"}, "organization"),
        ({"connection": "x" * 65}, "connection"),
        ({"prompt": "none"}, "prompt"),
    ],
)
async def test_bad_parameters_are_400(
    app: httpx.AsyncClient, owner: asyncpg.Connection, params: dict[str, str], field: str
) -> None:
    response = await app.get("/auth/login", params=params)
    assert_problem(response, 400, field)
    assert await owner.fetchval("SELECT count(*) FROM login_transactions") == 0
