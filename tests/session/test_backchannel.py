"""POST /auth/backchannel-logout: OpenID Connect Back-Channel Logout 1.0."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import httpx
import pytest

from app.session.idtoken import BACKCHANNEL_EVENT
from devkit.keys import SigningKey, TokenMinter
from tests.fixtures.standin import SESSION_CLIENT_ID, StandIn
from tests.helpers import assert_problem
from tests.session.support import PUBLIC_URL, cleared, login, session_rows, with_cookie


async def _post(app: httpx.AsyncClient, token: str) -> httpx.Response:
    return await app.post("/auth/backchannel-logout", data={"logout_token": token})


async def test_the_tenant_signs_a_session_out_on_every_copy(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    cookie = await login(app, "alice")
    other = await login(app, "bob")
    [alice] = [r for r in await session_rows(owner) if r["sub"] == "auth0|alice"]

    async def deliver(request: httpx.Request) -> httpx.Response:
        answer = await app.post(
            "/auth/backchannel-logout",
            content=request.content,
            headers={"Content-Type": request.headers["content-type"]},
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    standin.router.post(f"{PUBLIC_URL}/auth/backchannel-logout").mock(side_effect=deliver)
    async with httpx.AsyncClient() as admin:
        sent = await admin.post(
            "https://tenant.stub/dev/backchannel-logout",
            json={"sid": alice["sid"], "url": f"{PUBLIC_URL}/auth/backchannel-logout"},
        )
    assert sent.status_code == 200, sent.text
    assert sent.json()["status"] == 200

    assert [r["sub"] for r in await session_rows(owner)] == ["auth0|bob"]
    refused = await app.get("/api/patients", headers=with_cookie(cookie))
    assert_problem(refused, 401)
    assert cleared(refused)
    assert (await app.get("/api/patients", headers=with_cookie(other))).status_code == 200
    [ended] = await owner.fetch(
        "SELECT actor, detail->>'reason' AS reason FROM audit_events WHERE action = 'session.ended'"
    )
    assert (ended["actor"], ended["reason"]) == ("auth0|alice", "backchannel_logout")


async def test_a_token_with_only_sub_ends_all_of_its_sessions(
    app: httpx.AsyncClient, owner: asyncpg.Connection, minter: TokenMinter
) -> None:
    await login(app, "alice")
    await login(app, "alice")
    await login(app, "bob")
    response = await _post(app, minter.logout_token(client_id=SESSION_CLIENT_ID, sub="auth0|alice"))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert [r["sub"] for r in await session_rows(owner)] == ["auth0|bob"]


def _bad_tokens(minter: TokenMinter) -> dict[str, tuple[str, str]]:
    def token(**claims: Any) -> str:
        return minter.logout_token(client_id=SESSION_CLIENT_ID, sub="auth0|alice", **claims)

    stranger = SigningKey.generate(kid=minter.current.kid)
    return {
        "bad signature": (
            minter.logout_token(client_id=SESSION_CLIENT_ID, sub="auth0|alice", key=stranger),
            "invalid signature",
        ),
        "wrong audience": (
            minter.logout_token(client_id="another-client", sub="auth0|alice"),
            "invalid audience",
        ),
        "wrong issuer": (token(iss="https://evil.example/"), "invalid issuer"),
        "no events": (token(events=None), "missing back-channel logout event"),
        "other event": (token(events={"urn:other": {}}), "missing back-channel logout event"),
        "nonce present": (token(nonce="abc"), "a logout token must not carry a nonce"),
        "no sub nor sid": (
            minter.logout_token(client_id=SESSION_CLIENT_ID),
            "missing sub and sid claims",
        ),
        "no jti": (token(jti=None), "missing jti claim"),
        "too old": (token(iat=int(time.time()) - 3600), "token too old"),
        "from the future": (token(iat=int(time.time()) + 3600), "token issued in the future"),
        "expired": (token(exp=int(time.time()) - 3600), "token expired"),
        "an id token": (
            minter.id_token("auth0|alice", client_id=SESSION_CLIENT_ID),
            "missing back-channel logout event",
        ),
        "not a jwt": ("not-a-token", "malformed token"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "bad signature",
        "wrong audience",
        "wrong issuer",
        "no events",
        "other event",
        "nonce present",
        "no sub nor sid",
        "no jti",
        "too old",
        "from the future",
        "expired",
        "an id token",
        "not a jwt",
    ],
)
async def test_an_invalid_logout_token_is_400_and_ends_nothing(
    app: httpx.AsyncClient, owner: asyncpg.Connection, minter: TokenMinter, case: str
) -> None:
    cookie = await login(app, "alice")
    token, reason = _bad_tokens(minter)[case]
    response = await _post(app, token)
    assert_problem(response, 400, detail=f"the logout token is not valid: {reason}")
    assert response.headers["cache-control"] == "no-store"
    assert len(await session_rows(owner)) == 1
    assert await owner.fetchval("SELECT count(*) FROM logout_token_ids") == 0
    assert (await app.get("/api/patients", headers=with_cookie(cookie))).status_code == 200


async def test_a_replayed_logout_token_is_400(
    app: httpx.AsyncClient, owner: asyncpg.Connection, minter: TokenMinter
) -> None:
    token = minter.logout_token(client_id=SESSION_CLIENT_ID, sub="auth0|alice")
    assert (await _post(app, token)).status_code == 200
    await login(app, "alice")  # signed in again after the first logout
    replay = await _post(app, token)
    assert_problem(replay, 400, detail="the logout token was already used")
    assert len(await session_rows(owner)) == 1


async def test_the_logout_token_must_be_a_form_field(app: httpx.AsyncClient) -> None:
    missing = await app.post("/auth/backchannel-logout", data={"other": "x"})
    assert_problem(missing, 400, detail="the form must have exactly one logout_token")
    twice = await app.post(
        "/auth/backchannel-logout",
        content=b"logout_token=a&logout_token=b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(twice, 400, detail="the form must have exactly one logout_token")
    assert_problem(await app.post("/auth/backchannel-logout", json={"logout_token": "x"}), 415)


async def test_the_back_channel_event_claim_is_the_spec_uri() -> None:
    assert BACKCHANNEL_EVENT == "http://schemas.openid.net/event/backchannel-logout"


@pytest.mark.parametrize(
    "body",
    ["a&b&c&d&e&f&g&h&i", "logout_token={token}" + "&x=1" * 8, "&" * 500],
    ids=["nine bare fields", "a good token among nine fields", "five hundred separators"],
)
async def test_a_form_of_too_many_fields_is_400_and_ends_nothing(
    app: httpx.AsyncClient, owner: asyncpg.Connection, minter: TokenMinter, body: str
) -> None:
    cookie = await login(app, "alice")
    token = minter.logout_token(client_id=SESSION_CLIENT_ID, sub="auth0|alice")
    response = await app.post(
        "/auth/backchannel-logout",
        content=body.format(token=token).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, 400, detail="the form has too many fields", hides=[token])
    assert response.headers["cache-control"] == "no-store"
    assert len(await session_rows(owner)) == 1
    assert await owner.fetchval("SELECT count(*) FROM logout_token_ids") == 0
    assert (await app.get("/api/patients", headers=with_cookie(cookie))).status_code == 200
