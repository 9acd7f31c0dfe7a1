"""GET /fhir/AuditEvent: FHIR search over the audit log, one AuditEvent per patient per
disclosure (IHE BALP), every resource held to the R4B models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from app.core.settings import Settings
from tests.fhir.support import (
    AUDITOR,
    PATIENT,
    SCOPE,
    SEARCH,
    Callers,
    action_code,
    assert_bundle,
    assert_outcome,
    event_count,
    next_link,
    patient_refs,
    resources,
    seed_day,
    window,
)


async def _create_patients(client: httpx.AsyncClient, who: Callers, count: int) -> list[str]:
    ids = []
    for i in range(count):
        body = {**PATIENT, "given_name": f"Ada{chr(97 + i)}"}
        response = await client.post("/api/patients", json=body, headers=who["auditor"])
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


class TestSearchAuditEvents:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        response = await client.get(SEARCH, params=window())
        assert_outcome(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")

    async def test_missing_permission(
        self, client: httpx.AsyncClient, who: Callers, owner: asyncpg.Connection
    ) -> None:
        response = await client.get(SEARCH, params=window(), headers=who["clerk"])
        body = assert_outcome(response, 403)
        assert body["issue"][0]["code"] == "forbidden"
        denied = await owner.fetch("SELECT action, entity_id FROM audit_events")
        assert [(r["action"], r["entity_id"]) for r in denied] == [("access.denied", SEARCH)]

    async def test_ok(
        self, client: httpx.AsyncClient, who: Callers, owner: asyncpg.Connection
    ) -> None:
        [patient_id] = await _create_patients(client, who, 1)
        read = await client.get(f"/api/patients/{patient_id}", headers=who["auditor"])
        assert read.status_code == 200
        searched = await client.get("/api/patients", headers=who["auditor"])
        assert searched.status_code == 200

        response = await client.get(SEARCH, params=window(), headers=who["auditor"])
        bundle = assert_bundle(response)
        found = resources(bundle)
        assert [action_code(r) for r in found] == [
            "patient.searched",
            "patient.read",
            "patient.created",
        ]
        search, read_one, created = found
        assert {r["id"].split("-", 1)[1] for r in found} == {patient_id}
        assert search["subtype"][0]["code"] == "search-type"
        assert (search["action"], read_one["action"], created["action"]) == ("E", "R", "C")
        assert (read_one["subtype"][0]["code"], created["subtype"][0]["code"]) == (
            "read",
            "create",
        )
        assert search["type"]["code"] == "rest"
        assert all(patient_refs(r) == [f"Patient/{patient_id}"] for r in found)
        user = search["agent"][0]
        assert user["who"]["identifier"]["value"] == AUDITOR
        assert user["requestor"] is True
        assert user["network"]["address"] == "127.0.0.1"
        client_agent = search["agent"][1]
        assert client_agent["who"]["identifier"]["value"] == "spa-client-id"
        query = next(e for e in search["entity"] if e.get("role", {}).get("code") == "24")
        assert "detail" not in query  # no filters were used
        assert next_link(bundle) is None
        # The search itself is recorded, after what it read.
        last = await owner.fetchrow("SELECT action, detail FROM audit_events ORDER BY seq DESC")
        assert last["action"] == "audit.read"
        assert '"view": "fhir"' in last["detail"]

    async def test_a_search_that_showed_many_patients_is_one_resource_each(
        self, client: httpx.AsyncClient, who: Callers
    ) -> None:
        ids = await _create_patients(client, who, 3)
        shown = await client.get("/api/patients", params={"name": "Ada"}, headers=who["auditor"])
        assert len(shown.json()["items"]) == 3
        params = [*window(), ("action", "E")]

        first = resources(assert_bundle(await client.get(SEARCH, params=params, **_as(who))))
        again = resources(assert_bundle(await client.get(SEARCH, params=params, **_as(who))))
        assert [r["id"] for r in first] == [r["id"] for r in again]  # stable ids
        assert sorted(ref for r in first for ref in patient_refs(r)) == sorted(
            f"Patient/{i}" for i in ids
        )
        assert len({r["id"].split("-", 1)[0] for r in first}) == 1  # one event
        query = next(e for e in first[0]["entity"] if e.get("role", {}).get("code") == "24")
        assert query["detail"] == [{"type": "filter", "valueString": "name"}]
        assert "Ada" not in str(first)  # the names of filters, never their values

    async def test_patient_finds_a_patient_shown_on_page_3_of_a_search(
        self, client: httpx.AsyncClient, who: Callers, owner: asyncpg.Connection
    ) -> None:
        await _create_patients(client, who, 6)
        page: dict[str, object] = {"limit": 2}
        for _ in range(3):
            response = await client.get("/api/patients", params=page, headers=who["auditor"])
            shown = response.json()
            page = {"limit": 2, "cursor": shown["next_cursor"]}
        patient_id = shown["items"][1]["id"]
        searches = await owner.fetch(
            "SELECT seq FROM audit_events WHERE action = 'patient.searched' ORDER BY seq"
        )
        third = searches[2]["seq"]

        for value in (f"Patient/{patient_id}", patient_id):
            params = [*window(), ("patient", value)]
            found = resources(assert_bundle(await client.get(SEARCH, params=params, **_as(who))))
            assert f"{third}-{patient_id}" in [r["id"] for r in found]
            assert all(patient_refs(r) == [f"Patient/{patient_id}"] for r in found)
            codes = [action_code(r) for r in found if action_code(r) != "audit.read"]
            assert codes == ["patient.searched", "patient.created"]

    async def test_filters(self, client: httpx.AsyncClient, who: Callers) -> None:
        await _create_patients(client, who, 1)
        denied = await client.get(SEARCH, params=window(), headers=who["clerk"])
        assert denied.status_code == 403

        cases = {
            (("outcome", "4"),): {"access.denied"},
            (("outcome", "0"), ("action", "C")): {"patient.created"},
            (("agent", "auth0|clerk"),): {"access.denied"},
            (("agent", AUDITOR), ("action", "D")): set(),
            (("outcome", "12"),): set(),
            # The searches above, each recorded as it ran.
            (("agent", AUDITOR), ("action", "R")): {"audit.read"},
        }
        for extra, expected in cases.items():
            response = await client.get(SEARCH, params=[*window(), *extra], **_as(who))
            found = {action_code(r) for r in resources(assert_bundle(response))}
            assert found == expected, extra

    async def test_other_scopes_are_not_searched(
        self, client: httpx.AsyncClient, who: Callers
    ) -> None:
        await _create_patients(client, who, 1)
        response = await client.get(SEARCH, params=window(), headers=who["outsider"])
        assert resources(assert_bundle(response)) == []


def _as(who: Callers, caller: str = "auditor") -> dict[str, dict[str, str]]:
    return {"headers": who[caller]}


class TestSearchPaging:
    async def test_pages_find_every_resource_exactly_once(
        self, client: httpx.AsyncClient, who: Callers, owner: asyncpg.Connection
    ) -> None:
        day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        day -= timedelta(days=1)
        expected = await seed_day(owner, SCOPE, day, 120, every=8, shown=5)
        params = {"date": day.strftime("%Y-%m-%d"), "_count": "7"}
        url: str | None = SEARCH
        seen: list[str] = []
        pages = 0
        while url is not None:
            response = await client.get(url, params=params if pages == 0 else None, **_as(who))
            bundle = assert_bundle(response)
            page = [r["id"] for r in resources(bundle)]
            assert len(page) == 7 or next_link(bundle) is None
            seen += page
            url, pages = next_link(bundle), pages + 1
        assert seen == expected  # newest first, none skipped, none twice
        assert pages == -(-len(expected) // 7)

    async def test_a_cursor_is_bound_to_its_search(
        self, client: httpx.AsyncClient, who: Callers, owner: asyncpg.Connection
    ) -> None:
        day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        day -= timedelta(days=1)
        await seed_day(owner, SCOPE, day, 10, every=3, shown=2)
        params = {"date": day.strftime("%Y-%m-%d"), "_count": "3"}
        first = assert_bundle(await client.get(SEARCH, params=params, **_as(who)))
        cursor = httpx.URL(next_link(first) or "").params["_cursor"]
        before = await event_count(owner)

        other = {**params, "action": "R", "_cursor": cursor}
        assert_outcome(await client.get(SEARCH, params=other, **_as(who)), 400, "_cursor")
        outsider = await client.get(
            SEARCH, params={**params, "_cursor": cursor}, **_as(who, "outsider")
        )
        assert_outcome(outsider, 400, "_cursor")
        assert await event_count(owner) == before


class TestSearchLinks:
    async def test_the_host_header_never_builds_a_link(
        self, client: httpx.AsyncClient, who: Callers, owner: asyncpg.Connection, settings: Settings
    ) -> None:
        day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        day -= timedelta(days=1)
        await seed_day(owner, SCOPE, day, 6, every=3, shown=2)
        params = {"date": day.strftime("%Y-%m-%d"), "_count": "2"}
        forged = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
        response = await client.get(SEARCH, params=params, headers=forged | who["auditor"])
        bundle = assert_bundle(response)
        assert "evil.example" not in response.text
        base = f"{settings.server.public_url}/fhir/AuditEvent"
        links = [link["url"] for link in bundle["link"]]
        assert len(links) == 2 and next_link(bundle) is not None  # self and next
        assert all(url.startswith(f"{base}?") for url in links), links
        full = [entry["fullUrl"] for entry in bundle["entry"]]
        assert full == [f"{base}/{entry['resource']['id']}" for entry in bundle["entry"]]


class TestSearchBadInput:
    @pytest.mark.parametrize(
        ("query", "named"),
        [
            ([("date", "2026-01-01"), ("name", "Ada")], {"name"}),
            ([("date", "2026-01-01"), ("patient:missing", "true")], {"patient:missing"}),
            ([("name", "Ada")], {"name", "date"}),
            ([("date", "2026-13-01")], {"date"}),
            ([("date", "yesterday")], {"date"}),
            ([("date", "ge2026-01-01T10:00:00")], {"date"}),  # a time needs its zone
            ([("date", "ne2026-01-01")], {"date"}),
            ([("date", "2026")], {"date"}),  # a year is over 31 days
            ([("date", "ge2026-01-01"), ("date", "lt2026-03-01")], {"date"}),
            ([("date", "ge2026-01-01")], {"date"}),  # no upper bound
            ([("date", "ge2026-01-02"), ("date", "lt2026-01-01")], {"date"}),
            ([("date", "2026-01-01"), ("_count", "0")], {"_count"}),
            ([("date", "2026-01-01"), ("_count", "10000")], {"_count"}),
            ([("date", "2026-01-01"), ("_count", "ten")], {"_count"}),
            ([("date", "2026-01-01"), ("_cursor", "forged")], {"_cursor"}),
            ([("date", "2026-01-01"), ("_cursor", "A" * 60)], {"_cursor"}),
            ([("date", "2026-01-01"), ("patient", "Practitioner/1")], {"patient"}),
            ([("date", "2026-01-01"), ("action", "X")], {"action"}),
            ([("date", "2026-01-01"), ("outcome", "2")], {"outcome"}),
            ([("date", "2026-01-01"), ("agent", "")], {"agent"}),
            ([("date", "2026-01-01"), ("agent", "a"), ("agent", "b")], {"agent"}),
            ([("date", "2026-01-01"), ("name", "x"), ("outcome", "1")], {"name", "outcome"}),
        ],
    )
    async def test_rejected_with_the_parameter_named(
        self,
        client: httpx.AsyncClient,
        who: Callers,
        owner: asyncpg.Connection,
        query: list[tuple[str, str]],
        named: set[str],
    ) -> None:
        response = await client.get(SEARCH, params=query, **_as(who))
        assert_outcome(response, 400, *named)
        assert "Ada" not in response.text
        assert await event_count(owner) == 0  # nothing stored, not even the search

    @pytest.mark.parametrize(
        ("query", "named"),
        [
            ([("date", "2026-01-01"), ("_count", "\u00b2")], {"_count"}),  # isdigit, not ASCII
            ([("date", "2026-01-01"), ("_count", "\u0661\u0660")], {"_count"}),  # Arabic 10
            ([("date", "\u0662\u0660\u0662\u0666-01-01")], {"date"}),  # Arabic-Indic 2026
            ([("date", "eq9999-12-31")], {"date"}),  # its end is in year 10000
            ([("date", "ge9999-12-31T23:59Z"), ("date", "le9999-12-31")], {"date"}),
            ([("date", "ge0001-01-01T00:00+05:00"), ("date", "lt0001-01-02")], {"date"}),
            ([("date", "lt0001-01-01T00:00:00+14:00"), ("date", "ge0001-01-01")], {"date"}),
            ([("date", "2026-01-01"), ("agent", "auth0|a\x00b")], {"agent"}),
            ([("date", "2026-01-01"), ("agent", "auth0|\u202eevil")], {"agent"}),
            ([("date", "2026-01-01"), ("agent", "a\u2028b")], {"agent"}),
            ([("date", "2026-01-01"), ("patient", "\x00")], {"patient"}),
            ([("date", "2026-01-01"), ("_cursor", "\x00")], {"_cursor"}),
            ([("date", "2026-01-01\x00")], {"date"}),
        ],
        ids=[
            "superscript two",
            "Arabic-Indic count",
            "Arabic-Indic date",
            "eq the last day",
            "le the last day",
            "ge year 1 east of UTC",
            "lt year 1 east of UTC",
            "NUL in agent",
            "bidi override in agent",
            "line separator in agent",
            "NUL patient",
            "NUL cursor",
            "NUL after a date",
        ],
    )
    async def test_hostile_values_are_400_naming_the_parameter(
        self,
        client: httpx.AsyncClient,
        who: Callers,
        owner: asyncpg.Connection,
        query: list[tuple[str, str]],
        named: set[str],
    ) -> None:
        response = await client.get(SEARCH, params=query, **_as(who))
        assert_outcome(response, 400, *named)
        assert await event_count(owner) == 0  # nothing stored, not even the search
