"""What browsers can make the service keep is bounded: sign-ins in progress per client address
and in all (the oldest evicted), sessions per user (the oldest ended and recorded), and one
session per browser (signing in again ends the one the browser had)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.session.cookies import SESSION_COOKIE, TX_COOKIE
from devkit.db import ProvisionedDatabase
from tests.fixtures.standin import StandIn
from tests.helpers import assert_problem
from tests.session.support import (
    Started,
    callback,
    cleared,
    cookie_value,
    login,
    session_rows,
    session_settings,
    start_login,
    tenant_redirect,
    with_cookie,
)

Browsers = Callable[[str], httpx.AsyncClient]


@contextlib.asynccontextmanager
async def browsers(database: ProvisionedDatabase, **settings: Any) -> AsyncIterator[Browsers]:
    """One app with cookie sessions on (and `settings`), reached from any client address."""
    app = create_app(session_settings(database, **settings))
    async with LifespanManager(app) as manager, contextlib.AsyncExitStack() as stack:
        clients: dict[str, httpx.AsyncClient] = {}

        def browser(address: str) -> httpx.AsyncClient:
            if address not in clients:
                transport = httpx.ASGITransport(app=manager.app, client=(address, 50_000))
                client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
                clients[address] = client
                stack.push_async_callback(client.aclose)
            return clients[address]

        yield browser


async def pending(owner: asyncpg.Connection, address: str | None = None) -> int:
    if address is None:
        return int(await owner.fetchval("SELECT count(*) FROM login_transactions"))
    query = "SELECT count(*) FROM login_transactions WHERE address = $1"
    return int(await owner.fetchval(query, address))


async def assert_evicted(browser: httpx.AsyncClient, started: Started) -> None:
    """The sign-in is gone: its callback asks the browser to start again, and signs nobody in."""
    response = await callback(browser, started, await tenant_redirect(started))
    assert_problem(response, 400, detail="the sign-in is unknown or was already completed")
    assert cleared(response, TX_COOKIE)
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")


async def ended_rows(owner: asyncpg.Connection) -> list[tuple[str, str, str, str]]:
    rows = await owner.fetch(
        "SELECT actor, scope, entity_id, detail::text AS detail FROM audit_events"
        " WHERE action = 'session.ended' ORDER BY seq"
    )
    return [
        (r["actor"], r["scope"], r["entity_id"], orjson.loads(r["detail"])["reason"]) for r in rows
    ]


# --- Sign-ins in progress ------------------------------------------------------------------


async def test_a_sign_in_in_progress_keeps_its_client_address(
    database: ProvisionedDatabase, standin: StandIn, owner: asyncpg.Connection
) -> None:
    async with browsers(database) as browser:
        await start_login(browser("203.0.113.7"))
        await start_login(browser("2001:db8:1:2:3:4:5:6"))
    addresses = await owner.fetch("SELECT address FROM login_transactions ORDER BY created_at")
    assert [r["address"] for r in addresses] == ["203.0.113.7", "2001:db8:1:2::/64"]


async def test_the_21st_sign_in_from_one_address_evicts_its_oldest(
    database: ProvisionedDatabase, standin: StandIn, owner: asyncpg.Connection
) -> None:
    async with browsers(database) as browser:
        crowd, other = browser("198.51.100.9"), browser("203.0.113.7")
        elsewhere = await start_login(other)
        started = [await start_login(crowd) for _ in range(21)]
        assert await pending(owner, "198.51.100.9") == 20  # SESSION_MAX_PENDING_PER_ADDRESS
        assert await pending(owner) == 21
        await assert_evicted(crowd, started[0])
        # The newest and the other address's sign-ins are untouched.
        for browser_, kept in ((crowd, started[1]), (crowd, started[-1]), (other, elsewhere)):
            response = await callback(browser_, kept, await tenant_redirect(kept))
            assert response.status_code == 302, response.text
    assert len(await session_rows(owner)) == 3


async def test_an_ipv6_64_is_one_address(
    database: ProvisionedDatabase, standin: StandIn, owner: asyncpg.Connection
) -> None:
    async with browsers(database, session_max_pending_per_address=2) as browser:
        first = await start_login(browser("2001:db8::1"))
        await start_login(browser("2001:db8::2"))
        await start_login(browser("2001:db8:0:0:ffff::3"))  # the same /64
        assert await pending(owner, "2001:db8::/64") == 2
        await assert_evicted(browser("2001:db8::1"), first)


async def test_past_the_total_the_oldest_anywhere_are_evicted(
    database: ProvisionedDatabase,
    standin: StandIn,
    owner: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bounds = {"session_max_pending_per_address": 2, "session_max_pending": 5}
    async with browsers(database, **bounds) as browser:
        started = [await start_login(browser(f"192.0.2.{i}")) for i in range(1, 7)]
        assert await pending(owner) == 5
        await assert_evicted(browser("192.0.2.1"), started[0])
        newest = await callback(
            browser("192.0.2.6"), started[-1], await tenant_redirect(started[-1])
        )
        assert newest.status_code == 302
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "1 pending sign-in(s) evicted at SESSION_MAX_PENDING" in warnings


# --- Sessions of one user ------------------------------------------------------------------


async def test_past_the_sessions_a_user_may_hold_the_oldest_ends_and_is_recorded(
    database: ProvisionedDatabase, standin: StandIn, owner: asyncpg.Connection
) -> None:
    async with browsers(database, session_max_per_user=2) as browser:
        app = browser("127.0.0.1")
        bob = await login(app, "bob")
        cookies = [await login(app, "alice") for _ in range(2)]  # browsers without a cookie
        oldest = next(r for r in await session_rows(owner) if r["sub"] == "auth0|alice")
        assert await ended_rows(owner) == []  # two is within the bound
        cookies.append(await login(app, "alice"))
        assert [r["sub"] for r in await session_rows(owner)] == ["auth0|bob", *["auth0|alice"] * 2]

        refused = await app.get("/api/patients", headers=with_cookie(cookies[0]))
        assert_problem(refused, 401)
        assert cleared(refused)
        for live in (*cookies[1:], bob):
            assert (await app.get("/api/patients", headers=with_cookie(live))).status_code == 200
    assert await ended_rows(owner) == [
        ("auth0|alice", "user:auth0|alice", str(oldest["id"]), "session_limit")
    ]


async def test_signing_in_again_in_the_same_browser_ends_its_previous_session(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    old = await login(app, "alice")
    [previous] = await session_rows(owner)
    started = await start_login(app)
    path = await tenant_redirect(started, "alice")
    both = {"Cookie": f"{TX_COOKIE}={started.tx_cookie}; {SESSION_COOKIE}={old}"}
    response = await app.get(path, headers=both)
    assert response.status_code == 302, response.text
    new = cookie_value(response, SESSION_COOKIE)

    [row] = await session_rows(owner)
    assert row["id"] != previous["id"]
    assert_problem(await app.get("/api/patients", headers=with_cookie(old)), 401)
    assert (await app.get("/api/patients", headers=with_cookie(new))).status_code == 200
    assert await ended_rows(owner) == [
        ("auth0|alice", "user:auth0|alice", str(previous["id"]), "signed_in_again")
    ]


async def test_another_user_signing_in_in_the_browser_ends_the_first_users_session(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    alice = await login(app, "alice")
    [previous] = await session_rows(owner)
    started = await start_login(app)
    path = await tenant_redirect(started, "bob")
    both = {"Cookie": f"{TX_COOKIE}={started.tx_cookie}; {SESSION_COOKIE}={alice}"}
    assert (await app.get(path, headers=both)).status_code == 302
    assert [r["sub"] for r in await session_rows(owner)] == ["auth0|bob"]
    # Recorded in alice's scope, as alice's session.
    assert await ended_rows(owner) == [
        ("auth0|alice", "user:auth0|alice", str(previous["id"]), "signed_in_again")
    ]


async def test_a_refused_callback_keeps_the_browsers_session(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    old = await login(app, "alice")
    started = await start_login(app)
    await tenant_redirect(started, "alice")
    forged = {"Cookie": f"{TX_COOKIE}={started.tx_cookie}; {SESSION_COOKIE}={old}"}
    response = await app.get("/auth/callback?state=forged&code=x", headers=forged)
    assert_problem(response, 400, detail="the state does not match this browser's sign-in")
    assert len(await session_rows(owner)) == 1
    assert (await app.get("/api/patients", headers=with_cookie(old))).status_code == 200
    assert await ended_rows(owner) == []
