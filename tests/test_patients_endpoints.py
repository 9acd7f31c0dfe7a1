"""The patient endpoints over HTTP: one class per endpoint, then scope isolation.

Each bad input asserts the status, the problem body naming every field, and that nothing was
stored; each operation asserts its audit events and that no event carries a patient value.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from app.audit.verify import verify_chain
from tests.helpers import assert_problem, bearer

ORG_A, ORG_B = "org_alpha", "org_beta"
ALICE, BOB, CAROL, DAVE, ERIN = (f"auth0|{n}" for n in ("alice", "bob", "carol", "dave", "erin"))

PATIENT: dict[str, Any] = {
    "given_name": "Élodie",
    "family_name": "Dupont-Łukasz",
    "birth_date": "1985-04-12",
    "gender": "female",
    "identifier": {"system": "urn:oid:1.2.3", "value": "MRN-0001"},
    "phone": "+33 1 23 45 67 89",
    "email": "elodie.dupont@example.com",
    "address": {
        "line": ["1 rue de Rivoli"],
        "city": "Paris",
        "postal_code": "75001",
        "country": "fr",
    },
}
# Fragments of patient values that must never appear in an audit event or an error.
SECRETS = ("Élodie", "Dupont", "MRN-0001", "elodie", "Rivoli", "Paris", "1985", "+33")

Tokens = dict[str, dict[str, str]]


@pytest.fixture
def who(mint: Callable[..., str]) -> Tokens:
    """Callers: alice and bob share org A, carol is in org B, dave and erin have no org."""
    return {
        "alice": bearer(mint(ALICE, org_id=ORG_A, email_verified=True)),
        "bob": bearer(mint(BOB, org_id=ORG_A, email_verified=True)),
        "carol": bearer(mint(CAROL, org_id=ORG_B, email_verified=True)),
        "dave": bearer(mint(DAVE, email_verified=True)),
        "erin": bearer(mint(ERIN, email_verified=True)),
    }


def body(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(PATIENT)
    for name, value in changes.items():
        if value is ...:
            data.pop(name, None)
        else:
            data[name] = value
    return data


async def create(
    client: httpx.AsyncClient, headers: dict[str, str], **changes: Any
) -> dict[str, Any]:
    response = await client.post("/api/patients", json=body(**changes), headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def fields_of(problem: dict[str, Any]) -> set[str]:
    return {e["field"] for e in problem.get("errors", [])}


async def count(owner: asyncpg.Connection, table: str = "patients") -> int:
    value: int = await owner.fetchval(f"SELECT count(*) FROM {table}")
    return value


async def events(owner: asyncpg.Connection, action: str | None = None) -> list[asyncpg.Record]:
    rows = await owner.fetch(
        "SELECT action, crud, outcome, outcome_reason, scope, actor, patient_id, recorded_at,"
        " detail::text AS detail FROM audit_events"
        " WHERE $1::text IS NULL OR action = $1 ORDER BY seq",
        action,
    )
    for row in rows:
        for secret in SECRETS:
            assert secret not in row["detail"], (row["action"], secret)
    return rows


def version_tag(version: int) -> dict[str, str]:
    return {"If-Match": f'W/"{version}"'}


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
        await owner.execute("REVOKE INSERT ON audit_events FROM bff_app")
        response = await client.post(
            "/api/patients",
            json=body(identifier={"system": "urn:mrn", "value": "other"}),
            headers=who["alice"],
        )
        assert_problem(response, 500, hides=SECRETS)
        assert await count(owner) == 1
        assert len(await events(owner)) == 1


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


class TestGetPatient:
    async def test_anonymous(self, client: httpx.AsyncClient, who: Tokens) -> None:
        created = await create(client, who["alice"])
        assert (await client.get(f"/api/patients/{created['id']}")).status_code == 401

    async def test_missing_permission(
        self, client: httpx.AsyncClient, who: Tokens, mint: Callable[..., str]
    ) -> None:
        created = await create(client, who["alice"])
        token = bearer(mint(ALICE, permissions=["create:patients"], org_id=ORG_A))
        assert (
            await client.get(f"/api/patients/{created['id']}", headers=token)
        ).status_code == 403

    async def test_ok(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["alice"])
        response = await client.get(f"/api/patients/{created['id']}", headers=who["bob"])
        assert response.status_code == 200
        assert response.json() == created
        assert response.headers["etag"] == 'W/"1"'
        assert response.headers["cache-control"] == "no-store"
        [read] = await events(owner, "patient.read")
        assert str(read["patient_id"]) == created["id"] and read["actor"] == BOB

    async def test_another_scope_is_404_and_audited_as_denied(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["alice"])
        response = await client.get(f"/api/patients/{created['id']}", headers=who["carol"])
        problem = assert_problem(response, 404, hides=SECRETS)
        assert problem["detail"] == "no patient with this id"
        [denied] = await events(owner, "patient.read")
        assert denied["outcome"] == "denied" and denied["actor"] == CAROL
        assert denied["scope"] == f"org:{ORG_B}" and str(denied["patient_id"]) == created["id"]

    async def test_unknown_and_malformed_ids_are_404(
        self, client: httpx.AsyncClient, who: Tokens
    ) -> None:
        unknown = "00000000-0000-4000-8000-000000000000"
        assert_problem(
            await client.get(f"/api/patients/{unknown}", headers=who["alice"]), 404, hides=SECRETS
        )
        for bad in ("not-a-uuid", "1", "00000000-0000-4000-8000-00000000000Z"):
            assert_problem(
                await client.get(f"/api/patients/{bad}", headers=who["alice"]), 404, hides=SECRETS
            )

    async def test_deleted_is_410(self, client: httpx.AsyncClient, who: Tokens) -> None:
        created = await create(client, who["alice"])
        await client.delete(f"/api/patients/{created['id']}", headers=who["alice"])
        assert_problem(
            await client.get(f"/api/patients/{created['id']}", headers=who["alice"]),
            410,
            hides=SECRETS,
        )


class TestSearchPatients:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/api/patients")).status_code == 401

    async def test_missing_permission(
        self, client: httpx.AsyncClient, mint: Callable[..., str]
    ) -> None:
        token = bearer(mint(ALICE, permissions=["create:patients"]))
        assert (await client.get("/api/patients", headers=token)).status_code == 403

    async def test_ok_newest_first_each_read_audited_in_one_batch(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        ids = [
            (await create(client, who["alice"], identifier=..., given_name=f"P{i}"))["id"]
            for i in range(3)
        ]
        await create(client, who["carol"])
        response = await client.get("/api/patients", headers=who["alice"])
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        page = response.json()
        assert [p["id"] for p in page["items"]] == ids[::-1]
        assert page["next_cursor"] is None
        reads = await events(owner, "patient.read")
        assert sorted(str(e["patient_id"]) for e in reads) == sorted(ids)
        [search] = await events(owner, "patient.searched")
        assert len({e["recorded_at"] for e in [*reads, search]}) == 1  # one statement
        assert '"returned": 3' in search["detail"] or '"returned":3' in search["detail"]

    async def test_name_is_a_case_and_accent_insensitive_prefix(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        names = [
            ("Élodie", "Martin"),
            ("Zoë", "Åberg"),
            ("ELOISE", "Smith"),
            ("Bob", "Müller"),
            ("Straße", "Weiß"),
        ]
        by_name = {}
        for given, family in names:
            created = await create(
                client, who["alice"], identifier=..., given_name=given, family_name=family
            )
            by_name[given] = created["id"]

        async def found(query: str) -> set[str]:
            response = await client.get(
                "/api/patients", params={"name": query}, headers=who["alice"]
            )
            assert response.status_code == 200, response.text
            return {p["given_name"] for p in response.json()["items"]}

        assert await found("elo") == {"Élodie", "ELOISE"}
        assert await found("ÉLOD") == {"Élodie"}
        assert await found("zoe") == {"Zoë"}
        assert await found("aber") == {"Zoë"}  # family name
        assert await found("mull") == {"Bob"}
        assert await found("strass") == {"Straße"}
        assert await found("weiss") == {"Straße"}
        assert await found("x") == set()
        searched = await events(owner, "patient.searched")
        assert all('"name"' in e["detail"] and "elo" not in e["detail"] for e in searched)

    async def test_birth_date_and_identifier_filters(
        self, client: httpx.AsyncClient, who: Tokens
    ) -> None:
        a = await create(client, who["alice"])
        b = await create(
            client,
            who["alice"],
            birth_date="1990-01-01",
            identifier={"system": "urn:oid:1.2.3", "value": "MRN-2"},
        )
        params: dict[str, str]
        for params, expected in [
            ({"birth_date": "1990-01-01"}, [b["id"]]),
            ({"identifier": "urn:oid:1.2.3|MRN-0001"}, [a["id"]]),
            ({"identifier": "urn:oid:1.2.3|MRN-2", "birth_date": "1985-04-12"}, []),
            ({"name": "elo", "birth_date": "1985-04-12"}, [a["id"]]),
        ]:
            response = await client.get("/api/patients", params=params, headers=who["alice"])
            assert [p["id"] for p in response.json()["items"]] == expected, params

    async def test_keyset_pages_are_stable_under_inserts(
        self, client: httpx.AsyncClient, who: Tokens
    ) -> None:
        for i in range(7):
            await create(client, who["alice"], identifier=..., given_name=f"Page{i}")
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": "3", "name": "page"} | ({"cursor": cursor} if cursor else {})
            response = await client.get("/api/patients", params=params, headers=who["alice"])
            assert response.status_code == 200, response.text
            page = response.json()
            seen += [p["given_name"] for p in page["items"]]
            pages += 1
            if pages == 1:  # a new patient arrives while the client pages
                await create(client, who["alice"], identifier=..., given_name="PageNew")
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"Page{i}" for i in range(6, -1, -1)]
        assert pages == 3

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"limit": "201"}, "limit"),
            ({"limit": "0"}, "limit"),
            ({"limit": "many"}, "limit"),
            ({"birth_date": "1985-13-01"}, "birth_date"),
            ({"identifier": "no-bar"}, "identifier"),
            ({"identifier": "|value"}, "identifier"),
            ({"name": "a\x01b"}, "name"),
            ({"nmae": "typo"}, "nmae"),
        ],
    )
    async def test_bad_query_is_422(
        self,
        client: httpx.AsyncClient,
        who: Tokens,
        owner: asyncpg.Connection,
        params: dict[str, str],
        field: str,
    ) -> None:
        response = await client.get("/api/patients", params=params, headers=who["alice"])
        assert fields_of(assert_problem(response, 422, hides=SECRETS)) == {field}
        assert await count(owner, "audit_events") == 0

    async def test_limit_defaults_to_50_and_allows_200(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        await owner.executemany(
            "INSERT INTO patients (scope, created_by, given_name, family_name, birth_date)"
            " VALUES ($1, 'seed', $2, 'Seed', '1980-01-01')",
            [(f"org:{ORG_A}", f"Seed{i}") for i in range(60)],
        )
        page = (await client.get("/api/patients", headers=who["alice"])).json()
        assert len(page["items"]) == 50 and page["next_cursor"]
        page = (await client.get("/api/patients?limit=200", headers=who["alice"])).json()
        assert len(page["items"]) == 60 and page["next_cursor"] is None

    async def test_forged_or_foreign_cursor_is_400(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        for i in range(3):
            await create(client, who["alice"], identifier=..., given_name=f"C{i}")
            await create(client, who["bob"] if i else who["alice"], identifier=...)
        page = (await client.get("/api/patients?limit=1", headers=who["alice"])).json()
        cursor = page["next_cursor"]
        assert cursor
        before = await count(owner, "audit_events")
        tampered = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
        for params, caller in [
            ({"cursor": "garbage"}, "alice"),
            ({"cursor": tampered}, "alice"),
            ({"cursor": cursor, "name": "c"}, "alice"),  # another query
            ({"cursor": cursor}, "carol"),  # another scope
        ]:
            response = await client.get("/api/patients", params=params, headers=who[caller])
            assert fields_of(assert_problem(response, 400, hides=SECRETS)) == {"cursor"}
        assert await count(owner, "audit_events") == before

    async def test_deleted_patients_are_not_listed(
        self, client: httpx.AsyncClient, who: Tokens
    ) -> None:
        created = await create(client, who["alice"])
        await client.delete(f"/api/patients/{created['id']}", headers=who["alice"])
        page = (await client.get("/api/patients", headers=who["alice"])).json()
        assert page["items"] == []


class TestUpdatePatient:
    async def test_anonymous(self, client: httpx.AsyncClient, who: Tokens) -> None:
        created = await create(client, who["alice"])
        response = await client.patch(
            f"/api/patients/{created['id']}", json={"gender": "other"}, headers=version_tag(1)
        )
        assert response.status_code == 401

    async def test_missing_permission(
        self, client: httpx.AsyncClient, who: Tokens, mint: Callable[..., str]
    ) -> None:
        created = await create(client, who["alice"])
        token = bearer(mint(ALICE, permissions=["read:patients"], org_id=ORG_A))
        response = await client.patch(
            f"/api/patients/{created['id']}",
            json={"gender": "other"},
            headers=token | version_tag(1),
        )
        assert response.status_code == 403

    async def test_ok_bumps_the_version_and_keeps_the_old_one(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["alice"])
        response = await client.patch(
            f"/api/patients/{created['id']}",
            json={"phone": "+44 20 7946 0958", "address": None, "given_name": "Élodie"},
            headers=who["bob"] | version_tag(1),
        )
        assert response.status_code == 200, response.text
        updated = response.json()
        assert updated["version"] == 2 and response.headers["etag"] == 'W/"2"'
        assert updated["phone"] == "+442079460958" and updated["address"] is None
        assert updated["given_name"] == "Élodie" and updated["updated_at"] > created["updated_at"]
        [old] = await owner.fetch("SELECT * FROM patient_versions")
        assert old["version"] == 1 and old["change"] == "updated" and old["replaced_by"] == BOB
        assert sorted(old["changed_fields"]) == ["address", "phone"]
        [event] = await events(owner, "patient.updated")
        assert '"address"' in event["detail"] and '"phone"' in event["detail"]
        assert '"given_name"' not in event["detail"]  # sent, but unchanged

    async def test_without_if_match_is_428(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["alice"])
        response = await client.patch(
            f"/api/patients/{created['id']}", json={"gender": "other"}, headers=who["alice"]
        )
        assert fields_of(assert_problem(response, 428, hides=SECRETS)) == {"If-Match"}
        assert await owner.fetchval("SELECT version FROM patients") == 1

    @pytest.mark.parametrize("tag", ["*", "1", 'W/"1", W/"2"', "W/1"])
    async def test_unusable_if_match_is_400(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection, tag: str
    ) -> None:
        created = await create(client, who["alice"])
        response = await client.patch(
            f"/api/patients/{created['id']}",
            json={"gender": "other"},
            headers=who["alice"] | {"If-Match": tag},
        )
        assert fields_of(assert_problem(response, 400, hides=SECRETS)) == {"If-Match"}
        assert await owner.fetchval("SELECT version FROM patients") == 1

    async def test_stale_if_match_is_412_with_the_current_etag(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["alice"])
        url = f"/api/patients/{created['id']}"
        await client.patch(url, json={"gender": "other"}, headers=who["alice"] | version_tag(1))
        for tag in ('W/"1"', '"abc"'):
            response = await client.patch(
                url, json={"gender": "male"}, headers=who["alice"] | {"If-Match": tag}
            )
            assert_problem(response, 412, hides=SECRETS)
            assert response.headers["etag"] == 'W/"2"'
        assert await owner.fetchval("SELECT gender FROM patients") == "other"
        failed = [e for e in await events(owner, "patient.updated") if e["outcome"] == "failed"]
        assert [e["outcome_reason"] for e in failed] == ["stale version"] * 2

    async def test_concurrent_updates_from_one_version_one_wins(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["alice"])
        url = f"/api/patients/{created['id']}"
        responses = await asyncio.gather(
            client.patch(url, json={"gender": "male"}, headers=who["alice"] | version_tag(1)),
            client.patch(url, json={"gender": "other"}, headers=who["bob"] | version_tag(1)),
        )
        assert sorted(r.status_code for r in responses) == [200, 412]
        winner = next(r for r in responses if r.status_code == 200).json()
        row = await owner.fetchrow("SELECT version, gender FROM patients")
        assert (row["version"], row["gender"]) == (2, winner["gender"])
        assert await count(owner, "patient_versions") == 1

    async def test_nothing_changed_keeps_the_version(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["alice"])
        response = await client.patch(
            f"/api/patients/{created['id']}",
            json={"gender": "female"},
            headers=who["alice"] | version_tag(1),
        )
        assert response.status_code == 200 and response.json()["version"] == 1
        assert await count(owner, "patient_versions") == 0

    @pytest.mark.parametrize(
        ("patch", "fields"),
        [
            ({"given_name": None, "birth_date": None}, {"given_name", "birth_date"}),
            ({}, {"body"}),
            ({"email": "nope", "gender": "x", "id": "y"}, {"email", "gender", "id"}),
            ({"version": 5}, {"version"}),
        ],
    )
    async def test_invalid_patch_is_422_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        who: Tokens,
        owner: asyncpg.Connection,
        patch: dict[str, Any],
        fields: set[str],
    ) -> None:
        created = await create(client, who["alice"])
        response = await client.patch(
            f"/api/patients/{created['id']}", json=patch, headers=who["alice"] | version_tag(1)
        )
        assert fields_of(assert_problem(response, 422, hides=SECRETS)) == fields
        assert await owner.fetchval("SELECT version FROM patients") == 1

    async def test_another_scope_is_404_and_audited(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["dave"])
        response = await client.patch(
            f"/api/patients/{created['id']}",
            json={"gender": "other"},
            headers=who["erin"] | version_tag(1),
        )
        assert_problem(response, 404, hides=SECRETS)
        assert await owner.fetchval("SELECT gender FROM patients") == "female"
        [denied] = [e for e in await events(owner, "patient.updated")]
        assert denied["outcome"] == "denied" and denied["actor"] == ERIN

    async def test_taking_another_patients_identifier_is_409(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        first = await create(client, who["alice"])
        second = await create(client, who["alice"], identifier={"system": "s", "value": "2"})
        response = await client.patch(
            f"/api/patients/{second['id']}",
            json={"identifier": PATIENT["identifier"]},
            headers=who["alice"] | version_tag(1),
        )
        assert assert_problem(response, 409, hides=SECRETS)["existing_id"] == first["id"]
        assert await count(owner, "patient_versions") == 0
        assert await owner.fetchval("SELECT max(version) FROM patients") == 1

    async def test_deleted_is_410(self, client: httpx.AsyncClient, who: Tokens) -> None:
        created = await create(client, who["alice"])
        await client.delete(f"/api/patients/{created['id']}", headers=who["alice"])
        response = await client.patch(
            f"/api/patients/{created['id']}",
            json={"gender": "male"},
            headers=who["alice"] | version_tag(2),
        )
        assert_problem(response, 410, hides=SECRETS)


class TestDeletePatient:
    async def test_anonymous(self, client: httpx.AsyncClient, who: Tokens) -> None:
        created = await create(client, who["alice"])
        assert (await client.delete(f"/api/patients/{created['id']}")).status_code == 401

    async def test_missing_permission(
        self, client: httpx.AsyncClient, who: Tokens, mint: Callable[..., str]
    ) -> None:
        created = await create(client, who["alice"])
        token = bearer(mint(ALICE, permissions=["update:patients"], org_id=ORG_A))
        assert (
            await client.delete(f"/api/patients/{created['id']}", headers=token)
        ).status_code == 403

    async def test_ok_is_soft_and_frees_the_identifier(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["alice"])
        response = await client.delete(f"/api/patients/{created['id']}", headers=who["alice"])
        assert response.status_code == 204 and response.content == b""
        row = await owner.fetchrow("SELECT deleted_at, version FROM patients")
        assert row["deleted_at"] is not None and row["version"] == 2
        [old] = await owner.fetch("SELECT change, version FROM patient_versions")
        assert (old["change"], old["version"]) == ("deleted", 1)
        [event] = await events(owner, "patient.deleted")
        assert str(event["patient_id"]) == created["id"] and event["crud"] == "D"
        again = await create(client, who["alice"])  # the identifier is free again
        assert again["id"] != created["id"]
        assert_problem(
            await client.delete(f"/api/patients/{created['id']}", headers=who["alice"]),
            410,
            hides=SECRETS,
        )

    async def test_another_scope_is_404_and_nothing_deleted(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["alice"])
        for caller in ("carol", "dave"):
            response = await client.delete(f"/api/patients/{created['id']}", headers=who[caller])
            assert_problem(response, 404, hides=SECRETS)
        assert await owner.fetchval("SELECT deleted_at FROM patients") is None
        denied = await events(owner, "patient.deleted")
        assert [(e["outcome"], e["actor"]) for e in denied] == [("denied", CAROL), ("denied", DAVE)]

    async def test_stale_if_match_is_412(
        self, client: httpx.AsyncClient, who: Tokens, owner: asyncpg.Connection
    ) -> None:
        created = await create(client, who["alice"])
        response = await client.delete(
            f"/api/patients/{created['id']}", headers=who["alice"] | version_tag(7)
        )
        assert_problem(response, 412, hides=SECRETS)
        assert await owner.fetchval("SELECT deleted_at FROM patients") is None


class TestScopeIsolation:
    async def test_each_caller_sees_only_its_scope(
        self, client: httpx.AsyncClient, who: Tokens
    ) -> None:
        mine = {}
        for caller in ("alice", "carol", "dave", "erin"):
            mine[caller] = (await create(client, who[caller], given_name=caller))["id"]
        expected = {
            "alice": {"alice"},
            "bob": {"alice"},
            "carol": {"carol"},
            "dave": {"dave"},
            "erin": {"erin"},
        }
        for caller, names in expected.items():
            page = (await client.get("/api/patients", headers=who[caller])).json()
            assert {p["given_name"] for p in page["items"]} == names, caller
            for owner_name, patient_id in mine.items():
                status = (
                    await client.get(f"/api/patients/{patient_id}", headers=who[caller])
                ).status_code
                assert status == (200 if owner_name in names else 404), (caller, owner_name)

    async def test_a_user_in_an_org_does_not_see_their_own_no_org_patients(
        self, client: httpx.AsyncClient, mint: Callable[..., str]
    ) -> None:
        personal = await create(client, bearer(mint(DAVE, email_verified=True)))
        in_org = bearer(mint(DAVE, org_id=ORG_A, email_verified=True))
        assert (
            await client.get(f"/api/patients/{personal['id']}", headers=in_org)
        ).status_code == 404


class TestOpenAPI:
    async def test_documents_every_status(self, client: httpx.AsyncClient) -> None:
        spec = (await client.get("/openapi.json")).json()
        paths = spec["paths"]
        assert {"201", "409", "422", "400", "401", "403"} <= paths["/api/patients"]["post"][
            "responses"
        ].keys()
        item = paths["/api/patients/{patient_id}"]
        assert {"200", "404", "410"} <= item["get"]["responses"].keys()
        assert {"200", "409", "410", "412", "428"} <= item["patch"]["responses"].keys()
        assert {"204", "400", "404", "410", "412"} <= item["delete"]["responses"].keys()
        assert paths["/api/patients"]["get"]["x-permissions"] == ["read:patients"]
