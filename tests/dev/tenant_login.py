"""Helpers for the stand-in tenant's browser-login tests: the tenant with the session client
(`state`, `tenant`: fixtures a test module binds by name), PKCE, the sign-in, the grants."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from jose import jwt

from devkit.keys import TokenMinter
from devkit.tenant.app import create_tenant_app
from devkit.tenant.state import TenantState
from tests.fixtures.standin import SESSION_CLIENT_ID, SESSION_CLIENT_SECRET, sign_in

CALLBACK = "https://app.test/auth/callback"
RECEIVER = "https://app.test/auth/backchannel-logout"
AUDIENCE = "https://api.test.local"
SCOPE = "openid profile email offline_access"
CLIENT = {"client_id": SESSION_CLIENT_ID, "client_secret": SESSION_CLIENT_SECRET}
INVALID_REFRESH = {
    "error": "invalid_grant",
    "error_description": "Unknown or invalid refresh token.",
}


@pytest.fixture
def state(minter: TokenMinter) -> TenantState:
    return TenantState(
        minter,
        "m2m-client",
        "m2m-secret",
        session_client_id=SESSION_CLIENT_ID,
        session_client_secret=SESSION_CLIENT_SECRET,
    )


@pytest.fixture
async def tenant(state: TenantState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_tenant_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://tenant") as client:
        yield client


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_query(challenge: str, **overrides: str | None) -> dict[str, str]:
    query = {
        "response_type": "code",
        "client_id": SESSION_CLIENT_ID,
        "redirect_uri": CALLBACK,
        "scope": SCOPE,
        "state": "state-1",
        "nonce": "nonce-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "audience": AUDIENCE,
        **overrides,
    }
    return {k: v for k, v in query.items() if v is not None}


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def login(
    tenant: httpx.AsyncClient, username: str = "alice", **overrides: str | None
) -> tuple[str, str]:
    """Signs in through the form; (code, verifier)."""
    verifier, challenge = pkce()
    query = authorize_query(challenge, **overrides)
    callback = await sign_in(tenant, f"/authorize?{urlencode(query)}", username)
    return query_of(callback)["code"], verifier


async def exchange(
    tenant: httpx.AsyncClient, code: str, verifier: str, /, **overrides: str
) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
        **CLIENT,
        **overrides,
    }
    return await tenant.post("/oauth/token", data=form)


async def refresh(tenant: httpx.AsyncClient, token: str, **overrides: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": token, **CLIENT, **overrides}
    return await tenant.post("/oauth/token", data=form)


async def tokens(tenant: httpx.AsyncClient, username: str = "alice") -> dict[str, Any]:
    code, verifier = await login(tenant, username)
    answer = await exchange(tenant, code, verifier)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def id_claims(minter: TokenMinter, token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token, minter.jwks(), algorithms=["RS256"], audience=SESSION_CLIENT_ID, issuer=minter.issuer
    )
    return claims
