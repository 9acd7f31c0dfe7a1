"""GET /auth/callback: the state bound to the browser, the code exchange, the tokens checked,
sign-up and sign-in recorded, and the session started."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app.session.cookies import SESSION_COOKIE, TX_COOKIE
from app.session.crypto import TokenBox
from devkit.keys import SigningKey, TokenMinter
from tests.fixtures.standin import StandIn
from tests.helpers import assert_problem, audit_rows
from tests.session.support import (
    ENCRYPTION_KEY,
    callback,
    cleared,
    cookie_value,
    session_rows,
    set_cookies,
    start_login,
    tenant_redirect,
)


async def test_signs_in_sets_the_cookie_and_redirects(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    started = await start_login(app, return_to="/patients")
    response = await callback(app, started, await tenant_redirect(started, "alice"))

    assert response.status_code == 302
    assert response.headers["location"] == "/patients"
    cookies = set_cookies(response)
    assert cleared(response, TX_COOKIE)
    attributes = sorted(part.strip() for part in cookies[SESSION_COOKIE].split(";")[1:])
    assert attributes == sorted(["Max-Age=604800", "Path=/", "Secure", "HttpOnly", "SameSite=Lax"])
    value = cookie_value(response, SESSION_COOKIE)

    [row] = await session_rows(owner)
    assert bytes(row["cookie_hash"]) == hashlib.sha256(value.encode()).digest()
    assert row["sub"] == "auth0|alice"
    assert row["sid"] in standin.state.logins.sessions
    box = TokenBox(ENCRYPTION_KEY)
    access, refresh, id_token = (
        box.open(row["access_token"]),
        box.open(row["refresh_token"]),
        box.open(row["id_token"]),
    )
    stored = " ".join(str(v) for v in row.values()).encode() + b"".join(
        bytes(row[c]) for c in ("access_token", "refresh_token", "id_token", "cookie_hash")
    )
    for secret in (access, refresh, id_token, value):
        assert secret.encode() not in stored  # only encrypted, or hashed
    assert row["absolute_expires_at"] > row["idle_expires_at"] > row["created_at"]
    assert standin.state.counts["code_grant"] == 1
    assert await owner.fetchval("SELECT count(*) FROM login_transactions") == 0

    events = [(r["action"], r["actor"], r["scope"]) for r in await audit_rows(owner)]
    assert events == [
        ("user.registered", "auth0|alice", "user:auth0|alice"),
        ("user.signed_in", "auth0|alice", "user:auth0|alice"),
        ("session.started", "auth0|alice", "user:auth0|alice"),
    ]
    assert await owner.fetchval("SELECT count(*) FROM registrations") == 1


async def test_a_replayed_state_is_400(app: httpx.AsyncClient, owner: asyncpg.Connection) -> None:
    started = await start_login(app)
    path = await tenant_redirect(started)
    assert (await callback(app, started, path)).status_code == 302
    replay = await callback(app, started, path)
    assert_problem(replay, 400, detail="the sign-in is unknown or was already completed")
    assert SESSION_COOKIE not in set_cookies(replay)
    assert len(await session_rows(owner)) == 1


async def test_a_state_of_another_sign_in_is_400_and_uses_up_the_transaction(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    mine, other = await start_login(app), await start_login(app)
    path = await tenant_redirect(other)  # the code and state of someone else's sign-in
    response = await callback(app, mine, path)
    assert_problem(response, 400, detail="the state does not match this browser's sign-in")
    assert cleared(response, TX_COOKIE)
    assert await session_rows(owner) == []
    # Used once: even the right state is refused now.
    retry = await callback(app, mine, path.replace(other.params["state"], mine.params["state"]))
    assert_problem(retry, 400)
    assert await session_rows(owner) == []


async def test_a_callback_without_the_transaction_cookie_is_400(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    started = await start_login(app)
    response = await app.get(await tenant_redirect(started))
    assert_problem(response, 400, detail="no sign-in is in progress in this browser")
    assert await session_rows(owner) == []


async def test_an_unknown_transaction_cookie_is_400(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    started = await start_login(app)
    path = await tenant_redirect(started)
    forged = "A" * 43
    response = await app.get(path, headers={"Cookie": f"{TX_COOKIE}={forged}"})
    assert_problem(response, 400, detail="the sign-in is unknown or was already completed")
    assert await session_rows(owner) == []


async def test_an_error_from_the_tenant_is_400(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    started = await start_login(app)
    path = await tenant_redirect(started, "deny")  # the user cancels at the tenant
    response = await callback(app, started, path)
    assert_problem(
        response, 400, detail="the identity provider did not sign you in (access_denied)"
    )
    assert await session_rows(owner) == []
    assert standin.state.counts["code_grant"] == 0


async def test_an_expired_transaction_is_400(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    started = await start_login(app)
    path = await tenant_redirect(started)
    await owner.execute("UPDATE login_transactions SET expires_at = now() - interval '1 second'")
    response = await callback(app, started, path)
    assert_problem(response, 400, detail="the sign-in took too long; start again")
    assert await session_rows(owner) == []


def _replace_id_token(standin: StandIn, make: Callable[[dict[str, Any]], str]) -> None:
    """The tenant's code exchange answers with the ID token `make(original claims)` builds."""
    route = standin.router.routes["standin"]
    original = route.side_effect

    async def answer(request: httpx.Request) -> httpx.Response:
        response: httpx.Response = await original(request)  # type: ignore[misc,operator]
        if request.url.path != "/oauth/token" or b"authorization_code" not in request.content:
            return response
        await response.aread()
        body = response.json()
        claims = orjson.loads(_segment(body["id_token"]))
        body["id_token"] = make(claims)
        return httpx.Response(200, json=body)

    route.side_effect = answer


def _segment(token: str) -> bytes:
    import base64

    payload = token.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))


def _remint(minter: TokenMinter, claims: dict[str, Any], **changes: Any) -> str:
    merged = {**claims, **changes}
    sub = merged.pop("sub")
    merged.pop("iss", None)
    merged.pop("iat", None)
    merged.pop("exp", None)
    client_id = merged.pop("aud")
    ttl = merged.pop("ttl_seconds", 3600)
    return minter.id_token(sub, client_id=client_id, ttl_seconds=ttl, **merged)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aud": "another-client"}, "invalid audience"),
        ({"nonce": "n" * 43}, "invalid nonce"),
        ({"nonce": None}, "invalid nonce"),
        ({"ttl_seconds": -3600}, "token expired"),
        ({"key": "stranger"}, "invalid signature"),
        ({"key": "unknown"}, "unknown signing key"),
    ],
)
async def test_a_bad_id_token_is_400_and_starts_no_session(
    app: httpx.AsyncClient,
    owner: asyncpg.Connection,
    standin: StandIn,
    minter: TokenMinter,
    change: dict[str, Any],
    reason: str,
) -> None:
    def make(claims: dict[str, Any]) -> str:
        changes = dict(change)
        key = changes.pop("key", None)
        if key == "stranger":  # published kid, other key: the signature cannot match
            stranger = SigningKey.generate(kid=minter.current.kid)
            return stranger.sign({**claims})
        if key == "unknown":
            return SigningKey.generate(kid="never-published").sign({**claims})
        return _remint(minter, claims, **changes)

    _replace_id_token(standin, make)
    started = await start_login(app)
    response = await callback(app, started, await tenant_redirect(started))
    assert_problem(response, 400, detail=f"the ID token is not valid: {reason}")
    assert SESSION_COOKIE not in set_cookies(response)
    assert await session_rows(owner) == []
    assert await audit_rows(owner, "session.") == []


async def test_tenant_down_during_the_exchange_is_503(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    started = await start_login(app)
    path = await tenant_redirect(started)
    standin.router.routes["standin"].side_effect = httpx.ConnectError("down")
    response = await callback(app, started, path)
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"
    assert await session_rows(owner) == []


async def test_a_code_the_tenant_refuses_is_400(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    started = await start_login(app)
    path = await tenant_redirect(started)
    forged = path.replace("code=", "code=x")
    response = await callback(app, started, forged)
    assert_problem(response, 400, detail="the identity provider refused the code (invalid_grant)")
    assert await session_rows(owner) == []
