"""GET, PATCH and DELETE /api/patients/{id} over HTTP; then, across every patient route, scope
isolation and the statuses `/openapi.json` documents.

Each bad input asserts the status, the problem body naming every field, and that nothing was
stored; each operation asserts its audit events and that no event carries a patient value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import assert_problem, bearer
from tests.patients.support import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    ERIN,
    ORG_A,
    ORG_B,
    PATIENT,
    SECRETS,
    Tokens,
    count,
    create,
    events,
    fields_of,
    version_tag,
)


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
