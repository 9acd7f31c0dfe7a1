"""GET /api/patients over HTTP: filters, keyset pages and their cursors, one audit event a page.

Each bad input asserts the status, the problem body naming every field, and that nothing was
stored; each operation asserts its audit events and that no event carries a patient value.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import httpx
import orjson
import pytest

from tests.helpers import assert_problem, bearer
from tests.patients.support import ALICE, ORG_A, SECRETS, Tokens, count, create, events, fields_of


class TestSearchPatients:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/api/patients")).status_code == 401

    async def test_missing_permission(
        self, client: httpx.AsyncClient, mint: Callable[..., str]
    ) -> None:
        token = bearer(mint(ALICE, permissions=["create:patients"]))
        assert (await client.get("/api/patients", headers=token)).status_code == 403

    async def test_ok_newest_first_one_event_names_every_patient_shown(
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
        assert await events(owner, "patient.read") == []
        [search] = await events(owner, "patient.searched")
        detail = orjson.loads(search["detail"])
        assert detail["patient_ids"] == ids[::-1]  # in the order shown
        assert detail["returned"] == 3 and search["patient_id"] is None
        links = await owner.fetchval(
            "SELECT l.patient_ids::text[] FROM audit_event_patients l"
            " JOIN audit_events e USING (seq, recorded_at) WHERE e.action = 'patient.searched'"
        )
        assert sorted(links) == sorted(ids)

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
