"""The caller's account endpoints (app/account/endpoints/me.py): password reset, verification
email, sign-in history."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import respx

from app.account.emails import email_hash
from app.account.runtime import AccountRuntime
from app.audit.events import Actor, Event
from app.audit.record import record_event
from app.core.settings import Settings
from app.ratelimit.buckets import Rate, RateLimiter
from tests.fixtures.app import account_app
from tests.helpers import assert_problem, audit_rows, bearer, everything_stored


def limited(**rates: Rate) -> AccountRuntime:
    return AccountRuntime(limiter=RateLimiter(**rates))


# --- POST /api/account/password-reset ---------------------------------------------------

RESET = "/api/account/password-reset"


def stub_change_password(tenant: respx.MockRouter, **kwargs: Any) -> respx.Route:
    return tenant.post("/dbconnections/change_password").mock(**kwargs)


def change_password_bodies(tenant: respx.MockRouter) -> list[dict[str, Any]]:
    return [
        orjson.loads(call.request.content)
        for call in tenant.calls
        if call.request.url.path == "/dbconnections/change_password"
    ]


class TestPasswordReset:
    async def test_ok(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        stub_change_password(tenant, return_value=httpx.Response(200, text="We've sent..."))
        async with account_app(settings) as running:
            response = await running.http.post(RESET, json={"email": "Ada@Example.com"})
            await running.services.after_response.drain()
        assert response.status_code == 202
        assert response.json()["status"] == "accepted"
        assert change_password_bodies(tenant) == [
            {
                "client_id": settings.auth0.client_id,
                "email": "Ada@example.com",
                "connection": settings.auth0.db_connection,
            }
        ]
        [row] = await audit_rows(owner, "account.password_reset")
        assert (row["action"], row["outcome"], row["scope"]) == (
            "account.password_reset.requested",
            "success",
            "anonymous",
        )
        hashed = email_hash(settings.derived_key("email-hash"), "ada@example.com")
        assert orjson.loads(row["detail"]) == {"email_hash": hashed}
        assert "ada@" not in (await everything_stored(owner)).lower()

    async def test_same_answer_for_known_and_unknown_addresses(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        async def auth0(request: httpx.Request) -> httpx.Response:
            if orjson.loads(request.content)["email"] == "known@example.com":
                return httpx.Response(200, text="We've just sent you an email.")
            await asyncio.sleep(0.3)  # a slower path for an unknown user must not show
            return httpx.Response(400, json={"error": "user does not exist"})

        stub_change_password(tenant, side_effect=auth0)
        answers, durations = [], []
        async with account_app(settings) as running:
            for email in ("known@example.com", "unknown@example.com"):
                started = time.perf_counter()
                answers.append(await running.http.post(RESET, json={"email": email}))
                durations.append(time.perf_counter() - started)
            await running.services.after_response.drain()
        known, unknown = answers
        assert known.status_code == unknown.status_code == 202
        assert known.content == unknown.content
        ignore = {"x-request-id", "date"}
        assert {k: v for k, v in known.headers.items() if k not in ignore} == {
            k: v for k, v in unknown.headers.items() if k not in ignore
        }
        assert max(durations) < 0.25  # Auth0's 0.3 s is not waited for
        assert len(change_password_bodies(tenant)) == 2
        outcomes = [r["outcome"] for r in await audit_rows(owner, "account.password_reset")]
        assert sorted(outcomes) == ["failed", "success"]  # the record tells them apart

    async def test_auth0_down_is_still_202_and_recorded_failed(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        stub_change_password(tenant, return_value=httpx.Response(503))
        async with account_app(settings) as running:
            response = await running.http.post(RESET, json={"email": "ada@example.com"})
            await running.services.after_response.drain()
        assert response.status_code == 202
        [row] = await audit_rows(owner, "account.password_reset")
        assert (row["outcome"], row["outcome_reason"]) == ("failed", "auth0: 503")

    @pytest.mark.parametrize(
        ("body", "status", "field"),
        [
            ({"email": "not-an-address"}, 422, "email"),
            ({}, 422, "email"),
            ({"email": "ada@example.com", "extra": 1}, 422, "extra"),
            ({"email": 42}, 400, "email"),
        ],
    )
    async def test_bad_input_stores_nothing(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        body: dict[str, Any],
        status: int,
        field: str,
    ) -> None:
        route = stub_change_password(tenant, return_value=httpx.Response(200))
        async with account_app(settings) as running:
            response = await running.http.post(RESET, json=body)
            await running.services.after_response.drain()
        problem = assert_problem(response, status)
        assert field in [e["field"] for e in problem["errors"]]
        assert "not-an-address" not in response.text
        assert not route.called
        assert await everything_stored(owner) == ""

    async def test_malformed_json_and_wrong_type(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        async with account_app(settings) as running:
            malformed = await running.http.post(
                RESET, content=b"{", headers={"Content-Type": "application/json"}
            )
            form = await running.http.post(RESET, data={"email": "ada@example.com"})
        assert_problem(malformed, 400)
        assert_problem(form, 415)
        assert await everything_stored(owner) == ""

    async def test_limit_per_address_holds_across_instances(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        stub_change_password(tenant, return_value=httpx.Response(200))
        per_email = Rate(2, 900)
        async with (
            account_app(settings, limited(password_reset_per_email=per_email)) as a,
            account_app(settings, limited(password_reset_per_email=per_email)) as b,
        ):
            first = await a.http.post(RESET, json={"email": "ada@example.com"})
            second = await b.http.post(RESET, json={"email": "ADA@example.com"})
            third = await a.http.post(RESET, json={"email": "ada@example.com"})
            other = await b.http.post(RESET, json={"email": "bob@example.com"})
            await a.services.after_response.drain()
            await b.services.after_response.drain()
        assert [first.status_code, second.status_code, other.status_code] == [202, 202, 202]
        problem = assert_problem(third, 429)
        assert problem["type"].endswith("/rate-limited")
        assert 449 <= int(third.headers["Retry-After"]) <= 450  # 900 s / 2 per refill
        assert len(change_password_bodies(tenant)) == 3  # the refused one never reached Auth0
        assert len(await audit_rows(owner, "account.password_reset")) == 3

    async def test_limit_per_ip_holds_across_instances(
        self, settings: Settings, tenant: respx.MockRouter
    ) -> None:
        stub_change_password(tenant, return_value=httpx.Response(200))
        per_ip = Rate(2, 60)
        async with (
            account_app(settings, limited(password_reset_per_ip=per_ip)) as a,
            account_app(settings, limited(password_reset_per_ip=per_ip)) as b,
        ):
            answers = [
                await a.http.post(RESET, json={"email": "one@example.com"}),
                await b.http.post(RESET, json={"email": "two@example.com"}),
                await b.http.post(RESET, json={"email": "three@example.com"}),
            ]
            await a.services.after_response.drain()
            await b.services.after_response.drain()
        assert [r.status_code for r in answers] == [202, 202, 429]
        assert answers[2].headers["Retry-After"] == "30"
        assert len(change_password_bodies(tenant)) == 2


# --- POST /api/account/verification-email ------------------------------------------------

VERIFY = "/api/account/verification-email"


def stub_job(tenant: respx.MockRouter, **kwargs: Any) -> respx.Route:
    return tenant.post("/api/v2/jobs/verification-email").mock(**kwargs)


JOB = httpx.Response(201, json={"type": "verification_email", "status": "pending", "id": "job_1"})


class TestVerificationEmail:
    async def test_anonymous(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        route = stub_job(tenant, return_value=JOB)
        async with account_app(settings) as running:
            response = await running.http.post(VERIFY)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert not route.called
        assert await everything_stored(owner) == ""

    async def test_ok(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        route = stub_job(tenant, return_value=JOB)
        async with account_app(settings) as running:
            response = await running.http.post(VERIFY, headers=bearer(mint(sub="auth0|ada")))
        assert response.status_code == 202
        assert orjson.loads(route.calls.last.request.content) == {"user_id": "auth0|ada"}
        [row] = await audit_rows(owner, "account.verification_email")
        assert (row["outcome"], row["actor"], row["entity_id"]) == (
            "success",
            "auth0|ada",
            "auth0|ada",
        )

    async def test_rate_limited_per_user_across_instances(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        route = stub_job(tenant, return_value=JOB)
        rate = Rate(1, 600)
        async with (
            account_app(settings, limited(verification_email_per_user=rate)) as a,
            account_app(settings, limited(verification_email_per_user=rate)) as b,
        ):
            ok = await a.http.post(VERIFY, headers=bearer(mint(sub="auth0|ada")))
            refused = await b.http.post(VERIFY, headers=bearer(mint(sub="auth0|ada")))
            other = await b.http.post(VERIFY, headers=bearer(mint(sub="auth0|bob")))
        assert (ok.status_code, other.status_code) == (202, 202)
        assert_problem(refused, 429)
        assert refused.headers["Retry-After"] == "600"
        assert route.call_count == 2
        outcomes = [(r["actor"], r["outcome"]) for r in await audit_rows(owner, "account.")]
        assert outcomes == [
            ("auth0|ada", "success"),
            ("auth0|ada", "denied"),
            ("auth0|bob", "success"),
        ]

    async def test_auth0_unavailable_is_503_and_recorded(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_job(tenant, return_value=httpx.Response(503))
        async with account_app(settings) as running:
            response = await running.http.post(VERIFY, headers=bearer(mint()))
        assert_problem(response, 503)
        assert "Retry-After" in response.headers
        [row] = await audit_rows(owner, "account.verification_email")
        assert row["outcome"] == "failed"


# --- GET /api/me/logins ------------------------------------------------------------------

LOGINS = "/api/me/logins"


async def sign_in(owner: asyncpg.Connection, sub: str, ip: str = "203.0.113.7") -> None:
    """A `user.signed_in` event as GET /api/me writes it."""
    async with owner.transaction():
        await record_event(
            owner,
            Actor(scope=f"user:{sub}", sub=sub, source_ip=ip, user_agent="Firefox/130"),
            Event("user.signed_in", "E", entity_type="user", entity_id=sub),
        )


class TestMyLogins:
    async def test_anonymous(self, settings: Settings, tenant: respx.MockRouter) -> None:
        async with account_app(settings) as running:
            assert_problem(await running.http.get(LOGINS), 401)

    async def test_ok_lists_own_events_from_both_sources(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        await sign_in(owner, "auth0|ada")
        await sign_in(owner, "auth0|bob")
        yesterday = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 86_400))
        async with account_app(settings) as running:
            hook = await running.http.post(
                "/hooks/auth0/log-stream",
                headers={"Authorization": settings.auth0.log_stream_token.get_secret_value()},  # type: ignore[union-attr]
                json=[
                    {
                        "log_id": "L1",
                        "data": {
                            "type": "fp",
                            "date": f"{yesterday}.000Z",
                            "user_id": "auth0|ada",
                            "ip": "198.51.100.1",
                            "user_agent": "Chrome 120 / macOS",
                            "client_name": "Web",
                        },
                    }
                ],
            )
            response = await running.http.get(LOGINS, headers=bearer(mint(sub="auth0|ada")))
        assert hook.status_code == 200
        assert response.status_code == 200
        items = response.json()["items"]
        assert [(i["event"], i["source"], i["outcome"]) for i in items] == [
            ("user.signed_in", "service", "success"),
            ("idp.login.failed", "auth0", "failed"),  # older: its own Auth0 date
        ]
        auth0_item = items[1]
        assert auth0_item["type"] == "fp"
        assert auth0_item["ip"] == "198.51.100.1"
        assert auth0_item["device"] == "Chrome 120 / macOS"
        assert auth0_item["reason"] == "wrong password"
        assert auth0_item["at"].startswith(yesterday)
        assert items[0]["ip"] == "203.0.113.7"
        assert response.json()["next_cursor"] is None

    async def test_pages_with_a_cursor(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        for _ in range(5):
            await sign_in(owner, "auth0|ada")
        token = bearer(mint(sub="auth0|ada"))
        seen: list[str] = []
        async with account_app(settings) as running:
            url: str | None = f"{LOGINS}?limit=2"
            while url:
                page = (await running.http.get(url, headers=token)).json()
                seen += [i["at"] for i in page["items"]]
                cursor = page["next_cursor"]
                url = f"{LOGINS}?limit=2&cursor={cursor}" if cursor else None
            forged = await running.http.get(f"{LOGINS}?cursor=forged", headers=token)
        assert len(seen) == 5 and seen == sorted(seen, reverse=True)
        assert_problem(forged, 400)

    async def test_another_users_cursor_is_refused(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        for _ in range(2):
            await sign_in(owner, "auth0|bob")
        async with account_app(settings) as running:
            bobs = await running.http.get(
                f"{LOGINS}?limit=1", headers=bearer(mint(sub="auth0|bob"))
            )
            cursor = bobs.json()["next_cursor"]
            response = await running.http.get(
                f"{LOGINS}?cursor={cursor}", headers=bearer(mint(sub="auth0|ada"))
            )
        problem = assert_problem(response, 400)
        assert problem["errors"] == [{"field": "cursor", "message": "not a cursor for this list"}]

    @pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=x", "unknown=1"])
    async def test_bad_query(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        mint: Callable[..., str],
        query: str,
    ) -> None:
        async with account_app(settings) as running:
            response = await running.http.get(f"{LOGINS}?{query}", headers=bearer(mint()))
        assert_problem(response, 422)
