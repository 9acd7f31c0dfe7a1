"""Sign-out and revocation: stored in Postgres, spread by LISTEN/NOTIFY, checked in memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import respx

from app.account.runtime import AccountRuntime
from app.auth.revocation import APPLICATION_NAME, RevocationStore, compact, token_digest
from app.auth.tokens import Principal
from app.core.db import asyncpg_dsn
from app.core.settings import Settings
from tests.fixtures.app import account_app
from tests.helpers import assert_problem, audit_rows, bearer

LOGOUT = "/api/logout"
PROBE = "/api/me/logins"  # any route that needs a valid token


def principal(**fields: Any) -> Principal:
    values: dict[str, Any] = {"sub": "auth0|ada", "exp": int(time.time()) + 600}
    values.update(fields)
    values.setdefault("claims", {"sub": values["sub"], "exp": values["exp"], "iat": 1})
    return Principal(**values)


async def wait_until(condition: Callable[[], Any], timeout: float) -> float:  # noqa: ASYNC109
    """Seconds until `condition()` (sync or async) is true; fails after `timeout`."""
    started = time.perf_counter()
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(0.01)


# --- The store (unit) ----------------------------------------------------------------------


class TestRevocationStore:
    def test_nothing_revoked(self) -> None:
        assert not RevocationStore().is_revoked(principal(jti="j1", sid="s1"))

    def test_jti_and_sid_entries(self) -> None:
        store = RevocationStore(leeway_seconds=30, session_seconds=3600, clock=lambda: 1000.0)
        entries = store.entries_for(principal(jti="j1", sid="s1", exp=1600))
        assert entries == [
            ("jti", "auth0|ada", "j1", 1630.0),  # exp + leeway: the verifier's last chance
            ("sid", "auth0|ada", "s1", 4600.0),  # tokens of the session issued earlier
        ]
        store._remember(entries)
        assert store.is_revoked(principal(jti="j1"))
        assert store.is_revoked(principal(jti="other", sid="s1"))
        assert not store.is_revoked(principal(jti="other", sid="other"))
        assert not store.is_revoked(principal(sub="auth0|bob", jti="j1", sid="s1"))

    def test_token_without_jti_by_digest(self) -> None:
        store = RevocationStore()
        revoked = principal(claims={"sub": "auth0|ada", "iat": 1, "exp": 2})
        [(kind, _, value, _)] = store.entries_for(revoked)
        assert (kind, value) == ("token", token_digest(revoked))
        store._remember(store.entries_for(revoked))
        assert store.is_revoked(revoked)
        assert not store.is_revoked(principal(claims={"sub": "auth0|ada", "iat": 5, "exp": 6}))

    def test_long_ids_are_compacted(self) -> None:
        long = "x" * 500
        assert compact(long).startswith("sha256:") and len(compact(long)) < 80
        store = RevocationStore()
        store._remember(store.entries_for(principal(sub=long, jti=long)))
        assert store.is_revoked(principal(sub=long, jti=long))

    def test_expired_entries_are_forgotten(self) -> None:
        now = [1000.0]
        store = RevocationStore(leeway_seconds=0, session_seconds=0, clock=lambda: now[0])
        store._remember(store.entries_for(principal(jti="j1", sid="s1", exp=1100)))
        now[0] = 1101.0
        store._forget_expired()
        assert store.size == 0


# --- POST /api/logout -------------------------------------------------------------------


class TestLogout:
    async def test_anonymous(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        async with account_app(settings) as running:
            response = await running.http.post(LOGOUT)
        assert_problem(response, 401)
        assert await owner.fetchval("SELECT count(*) FROM revocations") == 0

    async def test_ok(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        token = mint(sub="auth0|ada", jti="jti-1", sid="sid-1")
        same_session = mint(sub="auth0|ada", jti="jti-2", sid="sid-1")
        other_session = mint(sub="auth0|ada", jti="jti-3", sid="sid-2")
        async with account_app(settings) as running:
            assert (await running.http.get(PROBE, headers=bearer(token))).status_code == 200
            response = await running.http.post(LOGOUT, headers=bearer(token))
            again = await running.http.get(PROBE, headers=bearer(token))
            sibling = await running.http.get(PROBE, headers=bearer(same_session))
            other = await running.http.get(PROBE, headers=bearer(other_session))
        assert response.status_code == 204 and response.content == b""
        for refused in (again, sibling):
            problem = assert_problem(refused, 401)
            assert problem["detail"] == "token revoked"
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]
            assert 'error_description="token revoked"' in refused.headers["www-authenticate"]
        assert other.status_code == 200
        rows = await owner.fetch("SELECT kind, sub, value FROM revocations ORDER BY kind")
        assert [tuple(r) for r in rows] == [
            ("jti", "auth0|ada", "jti-1"),
            ("sid", "auth0|ada", "sid-1"),
        ]
        [event] = await audit_rows(owner, "user.signed_out")
        assert (event["outcome"], event["actor"], event["entity_type"], event["entity_id"]) == (
            "success",
            "auth0|ada",
            "session",
            "sid-1",
        )

    async def test_revoked_until_exp_plus_leeway(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        exp = int(time.time()) + 120
        async with account_app(settings) as running:
            await running.http.post(LOGOUT, headers=bearer(mint(jti="j", sid=None, exp=exp)))
        expires = await owner.fetchval("SELECT extract(epoch FROM expires_at) FROM revocations")
        assert float(expires) == exp + settings.auth.leeway_seconds

    async def test_token_without_jti_is_revoked_by_digest(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        token = mint(jti=None, sid=None)
        async with account_app(settings) as running:
            assert (await running.http.post(LOGOUT, headers=bearer(token))).status_code == 204
            refused = await running.http.get(PROBE, headers=bearer(token))
            fresh = await running.http.get(PROBE, headers=bearer(mint(jti=None, sid=None, iat=1)))
        assert_problem(refused, 401)
        assert fresh.status_code == 200
        assert await owner.fetchval("SELECT kind FROM revocations") == "token"
        assert token not in str(await owner.fetch("SELECT * FROM revocations"))

    async def test_second_instance_learns_within_a_second(
        self, settings: Settings, tenant: respx.MockRouter, mint: Callable[..., str]
    ) -> None:
        token = bearer(mint(jti="j-cross", sid="s-cross"))
        async with account_app(settings) as a, account_app(settings) as b:
            assert (await b.http.get(PROBE, headers=token)).status_code == 200  # cached there
            assert (await a.http.post(LOGOUT, headers=token)).status_code == 204

            async def refused_on_b() -> bool:
                return (await b.http.get(PROBE, headers=token)).status_code == 401

            assert await wait_until(refused_on_b, timeout=1.0) < 1.0

    async def test_survives_restart(
        self, settings: Settings, tenant: respx.MockRouter, mint: Callable[..., str]
    ) -> None:
        token = bearer(mint(jti="j-restart", sid="s-restart"))
        async with account_app(settings) as first:
            assert (await first.http.post(LOGOUT, headers=token)).status_code == 204
        async with account_app(settings) as restarted:
            response = await restarted.http.get(PROBE, headers=token)
        assert_problem(response, 401)
        assert response.json()["detail"] == "token revoked"

    async def test_listener_reconnects_and_catches_up(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        token = bearer(mint(jti="j-gap", sid="s-gap"))
        b_store = RevocationStore(keepalive_seconds=0.2)
        async with (
            account_app(settings) as a,
            account_app(settings, AccountRuntime(revocations=b_store)) as b,
        ):
            before = b_store.reloads
            # Cut B's listening connection (a failover, a network blip), then revoke on A
            # while B is deaf: B must learn it from the reload after it reconnects. B's
            # reconnection waits for the gate, so the revocation surely falls in the gap
            # (otherwise B may already listen again and learn it from the notification).
            gate = asyncio.Event()
            connect = b_store._connect

            async def gated_connect() -> None:
                await gate.wait()
                await connect()

            b_store._connect = gated_connect  # type: ignore[method-assign]
            killed = await owner.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = $1 AND datname = current_database()"
                " AND pid = ANY($2::int[])",
                APPLICATION_NAME,
                [b_store._conn.get_server_pid()],  # type: ignore[union-attr]
            )
            assert len(killed) == 1
            await wait_until(lambda: not b_store.listening, timeout=5.0)
            assert (await a.http.post(LOGOUT, headers=token)).status_code == 204
            assert b_store.reloads == before  # still deaf: nothing learnt yet
            gate.set()
            await wait_until(lambda: b_store.reloads > before, timeout=5.0)
            assert b_store.listening
            assert_problem(await b.http.get(PROBE, headers=token), 401)

    async def test_expired_revocations_are_purged(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        await owner.execute(
            "INSERT INTO revocations (kind, sub, value, expires_at) VALUES"
            " ('jti', 'auth0|ada', 'old', now() - interval '1 second'),"
            " ('jti', 'auth0|ada', 'live', now() + interval '1 hour')"
        )
        store = RevocationStore()
        await store.start(settings.database.url)
        try:
            assert store.size == 1  # only live rows are loaded
            conn = await asyncpg.connect(asyncpg_dsn(settings.database.url))
            try:
                await store.purge(conn)
            finally:
                await conn.close()
        finally:
            await store.stop()
        assert [r["value"] for r in await owner.fetch("SELECT value FROM revocations")] == ["live"]

    async def test_check_costs_no_database_round_trip(
        self, settings: Settings, tenant: respx.MockRouter, mint: Callable[..., str]
    ) -> None:
        store = RevocationStore()
        await store.start(settings.database.url)
        try:
            assert store._conn is not None
            queries: list[str] = []
            store._conn.add_query_logger(lambda record: queries.append(record.query))
            caller = principal(jti="j", sid="s")
            started = time.perf_counter()
            for _ in range(10_000):
                store.is_revoked(caller)
            per_check = (time.perf_counter() - started) / 10_000
        finally:
            await store.stop()
        assert queries == []
        assert per_check < 20e-6

    async def test_start_fails_without_a_database(self) -> None:
        store = RevocationStore()
        with pytest.raises((OSError, asyncpg.PostgresError)):
            await store.start("postgresql://nobody@127.0.0.1:1/none")
