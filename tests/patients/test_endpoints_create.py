"""POST /api/patients over HTTP: the create rules, then Idempotency-Key.

Each bad input asserts the status, the problem body naming every field, and that nothing was
stored; each operation asserts its audit events and that no event carries a patient value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from app.audit.verify import verify_chain
from tests.helpers import assert_problem, bearer
from tests.patients.support import (
    ALICE,
    ORG_A,
    PATIENT,
    SECRETS,
    Tokens,
    body,
    count,
    create,
    events,
    fields_of,
)


class TestCreatePatient:
    async def test_anonymous(self, client: httpx.AsyncClient, owner: asyncpg.Connection) -> None:
        response = await client.post("/api/patients", json=PATIENT)
        assert response.status_code == 401
        assert await count(owner) == 0

    async def test_missing_permission(
        self, client: httpx.AsyncClient, mint: Callable[..., str], owner: asyncpg.Connection
    ) -> None:
        token = mint(ALICE, permissions=["read:patients"], org_id=ORG_A)
        response = await client.post("/api/patients", json=PATIENT, headers=bearer(token))
        assert response.status_code == 403
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
        assert await count(owner) == 0

    async def test_unverified_email_is_403(
        self, client: httpx.AsyncClient, mint: Callable[..., str], owner: asyncpg.Connection
    ) -> None:
        token = mint(ALICE, org_id=ORG_A, email_verified=False)
        response = await client.post("/api/patients", json=PATIENT, headers=bearer(token))
        assert response.status_code == 403
        assert await count(owner) == 0

    async def test_ok(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        response = await client.post("/api/patients", json=PATIENT, headers=who["alice"])
        assert response.status_code == 201
        created = response.json()
        assert response.headers["location"] == f"/api/patients/{created['id']}"
        assert response.headers["etag"] == 'W/"1"'
        assert response.headers["cache-control"] == "no-store"
        assert created["version"] == 1 and created["active"] is True
        assert created["given_name"] == "Élodie"
        assert created["phone"] == "+33123456789"  # separators dropped: E.164
        assert created["address"]["country"] == "FR"
        assert created["identifier"] == PATIENT["identifier"]
        assert {"created_at", "updated_at"} <= created.keys()
        row = await owner.fetchrow("SELECT * FROM patients")
        assert str(row["id"]) == created["id"]
        assert row["scope"] == f"org:{ORG_A}" and row["created_by"] == ALICE
        assert row["given_name_folded"] == "elodie"
        assert row["family_name_folded"] == "dupont-łukasz"
        [event] = await events(owner)
        assert (event["action"], event["crud"], event["outcome"]) == (
            "patient.created",
            "C",
            "success",
        )
        assert str(event["patient_id"]) == created["id"] and event["actor"] == ALICE
        assert '"given_name"' in event["detail"]  # names of the fields, not their values

    async def test_minimal_body_and_unicode_names(
        self, client: httpx.AsyncClient, who: Tokens
    ) -> None:
        created = await create(
            client,
            who["dave"],
            given_name="李",
            family_name="Ωμέγα",
            gender=...,
            identifier=...,
            phone=...,
            email=...,
            address=...,
        )
        assert created["given_name"] == "李" and created["family_name"] == "Ωμέγα"
        assert created["identifier"] is None and created["address"] is None

    async def test_every_invalid_field_is_named_and_nothing_stored(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        bad = body(
            given_name="",
            family_name="x" * 201,
            birth_date="2999-01-01",
            gender="robot",
            identifier={"system": "urn:x", "value": "v" * 256},
            phone="12345",
            email="elodie@",
            address={"country": "France"},
            ssn="123",
        )
        problem = assert_problem(
            await client.post("/api/patients", json=bad, headers=who["alice"]), 422, hides=SECRETS
        )
        assert fields_of(problem) == {
            "given_name",
            "family_name",
            "birth_date",
            "gender",
            "identifier.value",
            "phone",
            "email",
            "address.country",
            "ssn",
        }
        assert await count(owner) == 0 and await count(owner, "audit_events") == 0

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"given_name": "   "}, "given_name"),
            ({"given_name": "Ann\x00a"}, "given_name"),
            ({"family_name": "Smith\nJones"}, "family_name"),
            ({"birth_date": "2021-02-29"}, "birth_date"),
            ({"birth_date": "1850-01-01"}, "birth_date"),
            ({"birth_date": "12/04/1985"}, "birth_date"),
            ({"birth_date": "1985-04-12T00:00:00"}, "birth_date"),
            ({"identifier": {"system": "", "value": "x"}}, "identifier.system"),
            ({"identifier": {"system": "s"}}, "identifier.value"),
            ({"address": {}}, "address"),
            ({"address": {"line": []}}, "address.line"),
            ({"phone": "+0123456789"}, "phone"),
            ({"given_name": ...}, "given_name"),
            ({"birth_date": ...}, "birth_date"),
        ],
    )
    async def test_invalid_value_is_422(
        self,
        client: httpx.AsyncClient,
        who: Tokens,
        owner: asyncpg.Connection,
        changes: dict[str, Any],
        field: str,
    ) -> None:
        response = await client.post("/api/patients", json=body(**changes), headers=who["alice"])
        problem = assert_problem(response, 422, hides=SECRETS)
        assert fields_of(problem) == {field}
        assert response.headers["cache-control"] == "no-store"
        assert await count(owner) == 0

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"given_name": 42}, "given_name"),
            ({"birth_date": 19850412}, "birth_date"),
            ({"active": "yes"}, "active"),
            ({"identifier": "MRN-0001"}, "identifier"),
        ],
    )
    async def test_wrong_json_type_is_400(
        self,
        client: httpx.AsyncClient,
        who: Tokens,
        owner: asyncpg.Connection,
        changes: dict[str, Any],
        field: str,
    ) -> None:
        response = await client.post("/api/patients", json=body(**changes), headers=who["alice"])
        assert fields_of(assert_problem(response, 400, hides=SECRETS)) == {field}
        assert await count(owner) == 0

    async def test_malformed_json_and_wrong_media_type(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        headers = who["alice"] | {"content-type": "application/json"}
        assert_problem(
            await client.post("/api/patients", content=b"{", headers=headers), 400, hides=SECRETS
        )
        headers = who["alice"] | {"content-type": "text/plain"}
        assert_problem(
            await client.post("/api/patients", content=b"{}", headers=headers), 415, hides=SECRETS
        )
        assert await count(owner) == 0

    async def test_duplicate_identifier_is_409_with_existing_id(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        first = await create(client, who["alice"])
        response = await client.post(
            "/api/patients", json=body(given_name="Other"), headers=who["bob"]
        )  # same org
        problem = assert_problem(response, 409, hides=SECRETS)
        assert problem["existing_id"] == first["id"]
        assert await count(owner) == 1
        failed = [e for e in await events(owner) if e["outcome"] == "failed"]
        assert [(e["action"], e["outcome_reason"]) for e in failed] == [
            ("patient.created", "duplicate identifier")
        ]

    async def test_same_identifier_in_another_scope_is_another_patient(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        for caller in ("alice", "carol", "dave", "erin"):
            await create(client, who[caller])
        assert await count(owner) == 4

    async def test_concurrent_creates_of_one_identifier_make_one_row(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        responses = await asyncio.gather(
            *(client.post("/api/patients", json=PATIENT, headers=who["alice"]) for _ in range(6))
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201, 409, 409, 409, 409, 409]
        winner = next(r.json()["id"] for r in responses if r.status_code == 201)
        assert {r.json()["existing_id"] for r in responses if r.status_code == 409} == {winner}
        assert await count(owner) == 1

    async def test_a_create_and_its_record_commit_together_or_not_at_all(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["alice"])
        [event] = await events(owner, "patient.created")
        assert str(event["patient_id"]) == created["id"]
        since, until = (
            datetime.now(UTC) - timedelta(hours=1),
            datetime.now(UTC) + timedelta(hours=1),
        )
        report = await verify_chain(owner, event["scope"], since, until)
        assert (report.status, report.count) == ("intact", 1)
        # The audit append fails: the patient written in the same statement is not kept.
        await owner.execute(  # the append functions are the only way in (migrations/0009)
            "REVOKE EXECUTE ON FUNCTION audit_events_append, audit_events_append_one,"
            " audit_events_append_batch FROM bff_app"
        )
        response = await client.post(
            "/api/patients",
            json=body(identifier={"system": "urn:mrn", "value": "other"}),
            headers=who["alice"],
        )
        assert_problem(response, 500, hides=SECRETS)
        assert await count(owner) == 1
        assert len(await events(owner)) == 1

    async def test_concurrent_creates_each_get_their_own_patient_and_record(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        """Creates arriving together commit together (group commit): each still gets its
        own patient, Location and ETag, and its own event naming its caller."""
        callers = ["alice", "carol", "dave", "erin"] * 5
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/patients",
                    json=body(identifier={"system": "urn:mrn", "value": f"batch-{n}"}),
                    headers=who[caller],
                )
                for n, caller in enumerate(callers)
            )
        )
        assert [r.status_code for r in responses] == [201] * 20
        ids = [r.json()["id"] for r in responses]
        assert len(set(ids)) == 20
        assert all(r.headers["location"] == f"/api/patients/{r.json()['id']}" for r in responses)
        assert all(r.headers["etag"] == 'W/"1"' for r in responses)
        assert await count(owner) == 20
        created = await events(owner, "patient.created")
        assert sorted(str(e["patient_id"]) for e in created) == sorted(ids)
        since, until = (
            datetime.now(UTC) - timedelta(hours=1),
            datetime.now(UTC) + timedelta(hours=1),
        )
        for scope in {e["scope"] for e in created}:
            report = await verify_chain(owner, scope, since, until)
            assert report.status == "intact"

    async def test_concurrent_creates_whose_records_fail_store_nothing(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        await owner.execute(
            "REVOKE EXECUTE ON FUNCTION audit_events_append, audit_events_append_one,"
            " audit_events_append_batch FROM bff_app"
        )
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/patients",
                    json=body(identifier={"system": "urn:mrn", "value": f"lost-{n}"}),
                    headers=who["alice"],
                )
                for n in range(8)
            )
        )
        for response in responses:
            assert_problem(response, 500, hides=SECRETS)
        assert await count(owner) == 0
        assert await events(owner) == []


class TestIdempotencyKey:
    async def test_replay_returns_the_first_response(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        headers = who["alice"] | {"Idempotency-Key": "key-1"}
        first = await client.post("/api/patients", json=PATIENT, headers=headers)
        again = await client.post("/api/patients", json=PATIENT, headers=headers)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()
        assert again.headers["location"] == first.headers["location"]
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert await count(owner) == 1
        assert len(await events(owner, "patient.created")) == 1
        [replay] = await events(owner, "patient.read")  # the replay showed the patient again
        assert str(replay["patient_id"]) == first.json()["id"]

    async def test_same_key_with_another_body_is_422(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        headers = who["alice"] | {"Idempotency-Key": "key-1"}
        await client.post("/api/patients", json=PATIENT, headers=headers)
        response = await client.post(
            "/api/patients", json=body(given_name="Other"), headers=headers
        )
        assert fields_of(assert_problem(response, 422, hides=SECRETS)) == {"Idempotency-Key"}
        assert await count(owner) == 1

    async def test_keys_belong_to_one_caller(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        same = body(identifier=...)
        for caller in ("alice", "bob"):  # one org, two callers, one key
            response = await client.post(
                "/api/patients", json=same, headers=who[caller] | {"Idempotency-Key": "k"}
            )
            assert response.status_code == 201
            assert "idempotent-replayed" not in response.headers
        assert await count(owner) == 2

    async def test_concurrent_requests_with_one_key_create_one_patient(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        headers = who["alice"] | {"Idempotency-Key": "race"}
        same = body(identifier=...)  # nothing else would stop a second row
        responses = await asyncio.gather(
            *(client.post("/api/patients", json=same, headers=headers) for _ in range(6))
        )
        assert {r.status_code for r in responses} == {201}
        assert len({r.json()["id"] for r in responses}) == 1
        assert sum("idempotent-replayed" in r.headers for r in responses) == 5
        assert await count(owner) == 1

    async def test_a_409_is_replayed_too(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        existing = await create(client, who["alice"])
        headers = who["alice"] | {"Idempotency-Key": "dup"}
        for replayed in (False, True):
            response = await client.post("/api/patients", json=PATIENT, headers=headers)
            assert assert_problem(response, 409, hides=SECRETS)["existing_id"] == existing["id"]
            assert ("idempotent-replayed" in response.headers) is replayed
        assert await count(owner) == 1

    async def test_an_expired_key_can_be_used_again(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        headers = who["alice"] | {"Idempotency-Key": "old"}
        first = await client.post("/api/patients", json=body(identifier=...), headers=headers)
        await owner.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 s'")
        second = await client.post("/api/patients", json=body(identifier=...), headers=headers)
        assert second.status_code == 201 and second.json()["id"] != first.json()["id"]
        assert "idempotent-replayed" not in second.headers

    @pytest.mark.parametrize("key", ["", "has space", "x" * 256, "ключ"])
    async def test_a_malformed_key_is_400(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection, key: str
    ) -> None:
        headers: dict[str, Any] = who["alice"] | {"Idempotency-Key": key.encode()}
        response = await client.post("/api/patients", json=PATIENT, headers=headers)
        assert fields_of(assert_problem(response, 400, hides=SECRETS)) == {"Idempotency-Key"}
        assert await count(owner) == 0
