"""The flows of seed 000, each against its diagram's arrows: sign-up, sign-in and create
patient (the profile's two are in test_flows_profile.py), and each write flow with the
database down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import httpx

from devkit.db import ProvisionedDatabase
from tests.account.support import JWKS, USER, DatabaseOutage, audit_rows
from tests.fixtures.interactions import follows
from tests.helpers import assert_problem, bearer


class TestRegistration:
    async def test_anonymous(self, client: httpx.AsyncClient, owner: asyncpg.Connection) -> None:
        response = await client.post("/api/registrations")
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer realm="api"'
        assert await owner.fetchval("SELECT count(*) FROM registrations") == 0

    async def test_ok_follows_the_diagram(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        owner: asyncpg.Connection,
        interactions: list[tuple[str, str]],
    ) -> None:
        response = await client.post("/api/registrations", headers=bearer(mint(USER)))
        assert response.status_code == 201
        body = response.json()
        assert body["user_id"] == USER
        # Verify the token (JWKS), log the registration, reply: in that order, and no other
        # call to Auth0.
        assert follows(
            interactions, [JWKS, ("db", "write:registrations"), ("db", "write:audit_events")]
        )
        assert [i for i in interactions if i[0] == "auth0"] == [JWKS]
        row = await owner.fetchrow("SELECT * FROM registrations")
        assert row["auth0_user_id"] == USER
        assert row["registered_at"].isoformat().startswith(body["registered_at"][:19])
        events = await audit_rows(owner, "user.registered")
        assert [(e["actor"], e["entity_id"], e["outcome"]) for e in events] == [
            (USER, USER, "success")
        ]

    async def test_second_time_is_200_with_the_same_body(
        self, client: httpx.AsyncClient, mint: Callable[..., str], owner: asyncpg.Connection
    ) -> None:
        first = await client.post("/api/registrations", headers=bearer(mint(USER)))
        second = await client.post("/api/registrations", headers=bearer(mint(USER)))
        assert (first.status_code, second.status_code) == (201, 200)
        assert first.json() == second.json()
        assert len(await audit_rows(owner, "user.registered")) == 1

    async def test_concurrent_sign_ups_make_one_row(
        self, client: httpx.AsyncClient, mint: Callable[..., str], owner: asyncpg.Connection
    ) -> None:
        token = mint(USER)
        responses = await asyncio.gather(
            *(client.post("/api/registrations", headers=bearer(token)) for _ in range(5))
        )
        assert sorted(r.status_code for r in responses) == [200, 200, 200, 200, 201]
        assert await owner.fetchval("SELECT count(*) FROM registrations") == 1
        assert len(await audit_rows(owner, "user.registered")) == 1

    async def test_database_down_is_503_and_stores_nothing(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
    ) -> None:
        token = mint(USER)
        async with DatabaseOutage(database):
            response = await client.post("/api/registrations", headers=bearer(token))
        body = assert_problem(response, 503)
        assert response.headers["retry-after"]
        assert "database" in str(body["detail"])
        assert await owner.fetchval("SELECT count(*) FROM registrations") == 0
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0
        # The pool recovers by itself once the database is back.
        again = await client.post("/api/registrations", headers=bearer(token))
        assert again.status_code == 201


class TestMe:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get("/api/me"), 401)

    async def test_expired_token_is_told_apart(
        self, client: httpx.AsyncClient, mint: Callable[..., str]
    ) -> None:
        token = mint(USER, exp=int(time.time()) - 600, iat=int(time.time()) - 4000)
        response = await client.get("/api/me", headers=bearer(token))
        assert_problem(response, 401)
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert 'error_description="token expired"' in response.headers["www-authenticate"]
        assert token not in response.text

    async def test_ok_follows_the_diagram(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        interactions: list[tuple[str, str]],
    ) -> None:
        await client.post("/api/registrations", headers=bearer(mint(USER)))
        interactions.clear()
        response = await client.get("/api/me", headers=bearer(mint(USER, org_id=None)))
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["user_id"] == USER
        assert body["registered"] is True
        assert body["patient_count"] == 0
        assert "read:patients" in body["permissions"]
        # Token verified from the cached key (no Auth0 call), then the DB is read.
        assert [i for i in interactions if i[0] == "auth0"] == []
        assert ("db", "read:registrations") in interactions

    async def test_unregistered_caller_is_told_so(
        self, client: httpx.AsyncClient, mint: Callable[..., str]
    ) -> None:
        body = (await client.get("/api/me", headers=bearer(mint("auth0|new")))).json()
        assert body["registered"] is False
        assert body["registered_at"] is None

    async def test_signed_in_recorded_once_per_session(
        self, client: httpx.AsyncClient, mint: Callable[..., str], owner: asyncpg.Connection
    ) -> None:
        first_session = mint(USER, sid="session-a")
        await asyncio.gather(
            *(client.get("/api/me", headers=bearer(first_session)) for _ in range(4))
        )
        await client.get("/api/me", headers=bearer(mint(USER, sid="session-a")))  # refreshed
        await client.get("/api/me", headers=bearer(mint(USER, sid="session-b")))
        events = await audit_rows(owner, "user.signed_in")
        assert [e["session_id"] for e in events] == ["session-a", "session-b"]
        assert all(e["actor"] == USER and e["crud"] == "E" for e in events)


class TestCreatePatient:
    """Diagram 4; the patient rules themselves are in tests/patients/test_endpoints_*.py."""

    async def test_ok_follows_the_diagram(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        owner: asyncpg.Connection,
        interactions: list[tuple[str, str]],
    ) -> None:
        response = await client.post(
            "/api/patients",
            json={"given_name": "Ada", "family_name": "Lovelace", "birth_date": "1990-12-10"},
            headers=bearer(mint(USER, email_verified=True)),
        )
        assert response.status_code == 201, response.text
        patient_id = response.json()["id"]
        assert response.headers["location"].endswith(f"/api/patients/{patient_id}")
        # Verify the token (JWKS), store the patient with its audit event; no other Auth0 call.
        assert follows(interactions, [JWKS, ("db", "write:patients"), ("db", "write:audit_events")])
        assert [i for i in interactions if i[0] == "auth0"] == [JWKS]
        # What Postgres saw: the row and its event committed by one transaction (the same
        # xmin), the event recorded no earlier than the row was inserted, and about that row.
        stored = await owner.fetchrow(
            "SELECT xmin::text AS tx, created_at FROM patients WHERE id = $1::uuid", patient_id
        )
        assert stored is not None
        events = await owner.fetch(
            "SELECT xmin::text AS tx, recorded_at, patient_id, entity_id FROM audit_events"
            " WHERE action = 'patient.created'"
        )
        assert [(str(e["patient_id"]), e["entity_id"]) for e in events] == [
            (patient_id, patient_id)
        ]
        assert events[0]["tx"] == stored["tx"]
        assert stored["created_at"] <= events[0]["recorded_at"]

    async def test_without_permission_stores_nothing(
        self, client: httpx.AsyncClient, mint: Callable[..., str], owner: asyncpg.Connection
    ) -> None:
        response = await client.post(
            "/api/patients",
            json={"given_name": "Ada", "family_name": "Lovelace", "birth_date": "1990-12-10"},
            headers=bearer(mint(USER, permissions=["read:patients"], email_verified=True)),
        )
        assert_problem(response, 403)
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
        assert await owner.fetchval("SELECT count(*) FROM patients") == 0
        # The refusal itself is recorded, on its own connection.
        denied = await audit_rows(owner, "access.denied")
        assert [(e["actor"], e["outcome"], e["entity_id"]) for e in denied] == [
            (USER, "denied", "/api/patients")
        ]


class TestWriteFlowsWithTheDatabaseDown:
    """Each write flow answers 503 during an outage and leaves no half-done change."""

    async def test_create_patient(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
    ) -> None:
        token = mint(USER, email_verified=True)
        body = {"given_name": "Ada", "family_name": "Lovelace", "birth_date": "1990-12-10"}
        async with DatabaseOutage(database):
            response = await client.post("/api/patients", json=body, headers=bearer(token))
        assert_problem(response, 503)
        assert response.headers["retry-after"]
        assert await owner.fetchval("SELECT count(*) FROM patients") == 0
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0
        again = await client.post("/api/patients", json=body, headers=bearer(token))
        assert again.status_code == 201

    async def test_sign_in(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
    ) -> None:
        token = mint(USER, sid="outage-session")
        async with DatabaseOutage(database):
            response = await client.get("/api/me", headers=bearer(token))
        assert_problem(response, 503)
        assert await owner.fetchval("SELECT count(*) FROM sign_in_sessions") == 0
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0
        # The session was not marked seen, so its sign-in is recorded once it works.
        assert (await client.get("/api/me", headers=bearer(token))).status_code == 200
        assert len(await audit_rows(owner, "user.signed_in")) == 1
