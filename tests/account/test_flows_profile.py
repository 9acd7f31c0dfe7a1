"""The profile's flows of seed 000 (PATCH and GET /api/profile), each against its diagram's
arrows, plus every way Auth0 or the database can fail."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import asyncpg
import httpx
import orjson
import pytest
import respx

from devkit.db import ProvisionedDatabase
from tests.account.support import JWKS, USER, DatabaseOutage, audit_rows
from tests.fixtures.interactions import follows
from tests.helpers import assert_problem, bearer

USER_PATH = r"^/api/v2/users/auth0(%7C|\|)user-1$"

M2M = ("auth0", "POST /oauth/token")


def auth0_user(**extra: object) -> dict[str, object]:
    user: dict[str, object] = {
        "user_id": USER,
        "email": "user1@example.com",
        "email_verified": True,
        "name": "User One",
        "nickname": "one",
        "given_name": "User",
        "family_name": "One",
        "picture": "https://example.com/a.png",
        "updated_at": "2026-11-01T00:00:00.000Z",
        "user_metadata": {"phone_number": "+15551234567", "internal_note": "hidden"},
        "app_metadata": {"roles": ["admin"]},
        "last_ip": "10.0.0.1",
        "identities": [{"provider": "google-oauth2", "access_token": "idp-secret-token"}],
    }
    user.update(extra)
    return user


class TestUpdateProfile:
    async def test_anonymous(self, client: httpx.AsyncClient, tenant: respx.MockRouter) -> None:
        assert_problem(await client.patch("/api/profile", json={"nickname": "x"}), 401)
        assert not tenant.calls

    async def test_ok_follows_the_diagram(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        interactions: list[tuple[str, str]],
    ) -> None:
        patch = tenant.route(method="PATCH", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, json=auth0_user(nickname="newnick"))
        )
        update = {
            "nickname": "newnick",
            "user_metadata": {"address": {"city": "Lyon", "country": "FR"}},
        }
        response = await client.patch("/api/profile", json=update, headers=bearer(mint(USER)))
        assert response.status_code == 200, response.text
        assert json.loads(patch.calls.last.request.content) == update
        profile = response.json()
        assert profile["nickname"] == "newnick"
        assert profile["user_metadata"] == {"phone_number": "+15551234567"}
        for hidden in (
            "app_metadata",
            "identities",
            "last_ip",
            "idp-secret-token",
            "internal_note",
        ):
            assert hidden not in response.text
        assert follows(
            interactions,
            [
                JWKS,
                M2M,
                ("auth0", "PATCH /api/v2/users/auth0%7Cuser-1"),
                ("db", "write:audit_events"),
            ],
        )
        events = await audit_rows(owner, "profile.updated")
        assert len(events) == 1
        assert json.loads(events[0]["detail"]) == {"fields": ["nickname", "user_metadata.address"]}
        assert "Lyon" not in events[0]["detail"]

    @pytest.mark.parametrize(
        ("body", "status", "fields"),
        [
            ({"email": "x@example.com"}, 422, ["email"]),
            ({"app_metadata": {"roles": ["admin"]}}, 422, ["app_metadata"]),
            ({"user_metadata": {"plan": "gold"}}, 422, ["user_metadata.plan"]),
            ({"picture": "http://insecure.example/a.png"}, 422, ["picture"]),
            ({"nickname": ""}, 422, ["nickname"]),
            ({"nickname": "bad\u0000char"}, 422, ["nickname"]),
            (
                {"user_metadata": {"date_of_birth": "2999-01-01"}},
                422,
                ["user_metadata.date_of_birth"],
            ),
            ({"user_metadata": {"phone_number": "call me"}}, 422, ["user_metadata.phone_number"]),
            ({}, 422, ["body"]),
            ({"user_metadata": None}, 422, ["user_metadata"]),
            ({"nickname": None}, 422, ["nickname"]),
            ({"user_metadata": {"address": {"city": None}}}, 422, ["user_metadata.address.city"]),
            ({"nickname": 5}, 400, ["nickname"]),
            ({"nickname": "ok", "given_name": ["list"]}, 400, ["given_name"]),
        ],
    )
    async def test_bad_input_changes_nothing(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        body: dict[str, object],
        status: int,
        fields: list[str],
    ) -> None:
        patch = tenant.route(method="PATCH", path__regex=USER_PATH)
        response = await client.patch("/api/profile", json=body, headers=bearer(mint(USER)))
        problem = assert_problem(response, status)
        named = [e["field"] for e in problem["errors"]]  # type: ignore[union-attr]
        assert named == fields
        assert not patch.called
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0

    async def test_malformed_json_and_wrong_media_type(
        self, client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
    ) -> None:
        patch = tenant.route(method="PATCH", path__regex=USER_PATH)
        headers = bearer(mint(USER))
        bad_json = await client.patch(
            "/api/profile",
            content=b'{"nickname": ',
            headers={**headers, "content-type": "application/json"},
        )
        assert assert_problem(bad_json, 400)["detail"] == "the body is not valid JSON"
        not_json = await client.patch(
            "/api/profile", content=b"nickname=x", headers={**headers, "content-type": "text/plain"}
        )
        assert_problem(not_json, 415)
        array = await client.patch("/api/profile", json=["nickname"], headers=headers)
        assert_problem(array, 400)
        assert not patch.called

    async def test_streamed_body_over_the_limit_is_413(
        self, client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
    ) -> None:
        patch = tenant.route(method="PATCH", path__regex=USER_PATH)

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(17):
                yield b" " * 65536

        response = await client.patch(
            "/api/profile",
            content=chunks(),
            headers={**bearer(mint(USER)), "content-type": "application/json"},
        )
        assert_problem(response, 413)
        assert not patch.called

    async def test_auth0_refusal_is_recorded_as_failed(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        tenant.route(method="PATCH", path__regex=USER_PATH).mock(
            return_value=httpx.Response(
                400, json={"statusCode": 400, "message": "Payload validation error"}
            )
        )
        response = await client.patch(
            "/api/profile", json={"nickname": "n"}, headers=bearer(mint(USER))
        )
        assert_problem(response, 422)
        events = await audit_rows(owner, "profile.updated")
        assert [(e["outcome"], e["outcome_reason"]) for e in events] == [("failed", "auth0: 422")]

    async def test_rate_limited_then_succeeds_within_budget(
        self, client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
    ) -> None:
        reset = int(time.time()) + 1
        patch = tenant.route(method="PATCH", path__regex=USER_PATH).mock(
            side_effect=[
                httpx.Response(429, headers={"x-ratelimit-reset": str(reset)}),
                httpx.Response(200, json=auth0_user()),
            ]
        )
        started = time.monotonic()
        response = await client.patch(
            "/api/profile", json={"nickname": "n"}, headers=bearer(mint(USER))
        )
        assert response.status_code == 200
        assert patch.call_count == 2
        assert time.monotonic() - started < 3.0

    async def test_rate_limited_past_budget_is_503_and_recorded(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        patch = tenant.route(method="PATCH", path__regex=USER_PATH).mock(
            return_value=httpx.Response(429, headers={"retry-after": "30"})
        )
        response = await client.patch(
            "/api/profile", json={"nickname": "n"}, headers=bearer(mint(USER))
        )
        assert_problem(response, 503)
        assert int(response.headers["retry-after"]) >= 30
        assert patch.call_count == 1
        assert [e["outcome"] for e in await audit_rows(owner, "profile.updated")] == ["failed"]

    async def test_server_error_then_success(
        self, client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
    ) -> None:
        patch = tenant.route(method="PATCH", path__regex=USER_PATH).mock(
            side_effect=[httpx.Response(500), httpx.Response(200, json=auth0_user())]
        )
        response = await client.patch(
            "/api/profile", json={"nickname": "n"}, headers=bearer(mint(USER))
        )
        assert response.status_code == 200
        assert patch.call_count == 2

    async def test_timeouts_end_in_503(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        tenant.route(method="PATCH", path__regex=USER_PATH).mock(
            side_effect=httpx.ReadTimeout("slow")
        )
        response = await client.patch(
            "/api/profile", json={"nickname": "n"}, headers=bearer(mint(USER))
        )
        assert_problem(response, 503)
        assert response.headers["retry-after"]
        assert [e["outcome"] for e in await audit_rows(owner, "profile.updated")] == ["failed"]

    async def test_stale_m2m_token_is_renewed_once(
        self, client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
    ) -> None:
        patch = tenant.route(method="PATCH", path__regex=USER_PATH).mock(
            side_effect=[
                httpx.Response(401, json={"message": "Expired token"}),
                httpx.Response(200, json=auth0_user()),
            ]
        )
        response = await client.patch(
            "/api/profile", json={"nickname": "n"}, headers=bearer(mint(USER))
        )
        assert response.status_code == 200
        assert patch.call_count == 2
        assert tenant.routes["oauth_token"].call_count == 2

    async def test_non_json_answer_is_502(
        self, client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
    ) -> None:
        tenant.route(method="PATCH", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, text="<html>oops</html>")
        )
        response = await client.patch(
            "/api/profile", json={"nickname": "n"}, headers=bearer(mint(USER))
        )
        assert_problem(response, 502)
        assert "<html>" not in response.text

    async def test_audit_failure_after_auth0_success_still_tells_the_truth(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        database: ProvisionedDatabase,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        token = mint(USER)
        await client.get("/healthz")

        async def patched(request: httpx.Request) -> httpx.Response:
            await outage.__aenter__()
            return httpx.Response(200, json=auth0_user(nickname="n"))

        outage = DatabaseOutage(database)
        tenant.route(method="PATCH", path__regex=USER_PATH).mock(side_effect=patched)
        try:
            response = await client.patch(
                "/api/profile", json={"nickname": "n"}, headers=bearer(token)
            )
        finally:
            await outage.__aexit__()
        assert response.status_code == 200
        assert response.json()["nickname"] == "n"
        critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert len(critical) == 1
        assert getattr(critical[0], "user_id", None) == USER
        assert getattr(critical[0], "fields", None) == ["nickname"]


class TestGetProfile:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get("/api/profile"), 401)

    async def test_ok_follows_the_diagram(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        interactions: list[tuple[str, str]],
    ) -> None:
        await insert_patients(owner, f"user:{USER}", 3)
        await insert_patients(owner, "user:auth0|someone-else", 2)
        tenant.route(method="GET", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, json=auth0_user())
        )
        response = await client.get("/api/profile", headers=bearer(mint(USER)))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["profile"]["user_id"] == USER
        assert "app_metadata" not in body["profile"]
        assert len(body["patients"]["items"]) == 3
        assert body["patients"]["next_cursor"] is None
        assert follows(
            interactions,
            [
                JWKS,
                M2M,
                ("auth0", "GET /api/v2/users/auth0%7Cuser-1"),
                ("db", "read:patients"),
                ("db", "write:audit_events"),
            ],
        )
        # One event for the page, naming every patient on it in the order shown.
        [read] = await owner.fetch(
            "SELECT patient_id, detail::text AS detail FROM audit_events"
            " WHERE action = 'patient.read'"
        )
        assert read["patient_id"] is None
        shown = [p["id"] for p in body["patients"]["items"]]
        assert orjson.loads(read["detail"]) == {"via": "profile", "patient_ids": shown}

    async def test_profile_reads_are_cached(
        self, client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
    ) -> None:
        get = tenant.route(method="GET", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, json=auth0_user())
        )
        for _ in range(3):
            assert (await client.get("/api/profile", headers=bearer(mint(USER)))).status_code == 200
        assert get.call_count == 1

    async def test_auth0_down_is_503_and_no_patient_is_read(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        await insert_patients(owner, f"user:{USER}", 2)
        tenant.route(method="GET", path__regex=USER_PATH).mock(
            side_effect=httpx.ConnectError("down")
        )
        response = await client.get("/api/profile", headers=bearer(mint(USER)))
        assert_problem(response, 503)
        assert await audit_rows(owner, "patient.read") == []


async def insert_patients(owner: asyncpg.Connection, scope: str, count: int) -> None:
    await owner.executemany(
        "INSERT INTO patients (scope, created_by, given_name, family_name, birth_date) "
        "VALUES ($1, 'seed', $2, 'Tester', '1980-01-01')",
        [(scope, f"Given{i}") for i in range(count)],
    )
