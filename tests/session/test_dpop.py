"""SESSION_DPOP: each cookie session's tokens bound to a key of its own, stored encrypted, with
a proof sent to the tenant's token endpoint at sign-in and at every refresh (the nonce dance
included); the bound access token serves the service's own routes in process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from jose import jwt

from app.core.settings import Settings
from app.session.crypto import TokenBox
from app.session.dpop import SessionKey
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import running_app
from tests.fixtures.standin import StandIn
from tests.helpers import assert_problem, audit_rows
from tests.session.support import (
    ENCRYPTION_KEY,
    callback,
    cleared,
    login,
    make_due,
    session_rows,
    session_settings,
    start_login,
    tenant_redirect,
    with_cookie,
)

BOX = TokenBox(ENCRYPTION_KEY)


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return session_settings(database, session_dpop=True)


def _bound_to(row: asyncpg.Record) -> tuple[str | None, str]:
    """The `cnf.jkt` of the session's access token, and its key's thumbprint."""
    claims = jwt.get_unverified_claims(BOX.open(row["access_token"]))
    key = SessionKey.from_json(BOX.open(row["dpop_key"]))
    return claims.get("cnf", {}).get("jkt"), key.thumbprint


async def test_sign_in_binds_the_sessions_tokens_to_its_own_key(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    cookie = await login(app, "alice")
    other = await login(app, "bob")

    rows = await session_rows(owner)
    assert len(rows) == 2
    for row in rows:
        jkt, thumbprint = _bound_to(row)
        assert jkt == thumbprint
        assert b'"d"' not in bytes(row["dpop_key"])  # sealed, never the JWK in clear
    assert _bound_to(rows[0])[1] != _bound_to(rows[1])[1]  # a key per session
    # The tenant asked for its nonce once; every grant then carried a proof.
    assert standin.state.counts["dpop_nonce_challenge"] == 1
    assert standin.state.counts["dpop_grant"] == 2
    for value in (cookie, other):  # the service's own routes: the bound token, no proof
        response = await app.get("/api/patients", headers=with_cookie(value))
        assert response.status_code == 200, response.text


async def test_a_refresh_sends_a_proof_of_the_same_key(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    cookie = await login(app)
    [before] = await session_rows(owner)
    await make_due(owner, 10)

    response = await app.get("/api/patients", headers=with_cookie(cookie))

    assert response.status_code == 200, response.text
    assert standin.state.counts["refresh_grant"] == 1
    assert standin.state.counts["dpop_grant"] == 2  # the code exchange and the refresh
    [after] = await session_rows(owner)
    assert BOX.open(after["access_token"]) != BOX.open(before["access_token"])
    jkt, thumbprint = _bound_to(after)
    assert jkt == thumbprint == _bound_to(before)[1]


async def test_a_refresh_answered_with_unbound_tokens_is_a_502_and_keeps_the_session(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    cookie = await login(app)
    await make_due(owner, 10)
    standin.state.dpop.enabled = False  # the tenant stopped binding tokens

    response = await app.get("/api/patients", headers=with_cookie(cookie))

    assert_problem(response, 502)
    assert not cleared(response)
    assert len(await session_rows(owner)) == 1
    [failed] = await audit_rows(owner, "session.refresh_failed")
    assert failed["outcome"] == "failed"


async def test_a_tenant_that_does_not_bind_tokens_fails_the_sign_in(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    standin.state.dpop.enabled = False  # the API in Auth0 does not allow DPoP
    started = await start_login(app)
    response = await callback(app, started, await tenant_redirect(started))

    assert response.status_code == 400, response.text
    assert "did not bind the tokens" in response.text
    assert await session_rows(owner) == []
    assert await audit_rows(owner, "session.started") == []


async def test_an_unreadable_key_ends_the_session_at_its_refresh(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    cookie = await login(app)
    await make_due(owner, 10)
    await owner.execute("UPDATE browser_sessions SET dpop_key = $1", BOX.seal("not a key"))

    response = await app.get("/api/patients", headers=with_cookie(cookie))

    assert_problem(response, 401)
    assert cleared(response)
    assert await session_rows(owner) == []
    assert standin.state.counts["refresh_grant"] == 0  # no grant without the key


@pytest.fixture
async def required_app(
    database: ProvisionedDatabase, standin: StandIn
) -> AsyncIterator[httpx.AsyncClient]:
    settings = session_settings(database, session_dpop=True, dpop_mode="required")
    async with running_app(settings) as http:
        yield http


async def test_cookie_requests_need_no_proof_even_when_dpop_is_required(
    required_app: httpx.AsyncClient,
) -> None:
    cookie = await login(required_app)
    response = await required_app.get("/api/patients", headers=with_cookie(cookie))
    assert response.status_code == 200, response.text
