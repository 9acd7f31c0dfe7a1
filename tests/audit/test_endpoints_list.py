"""GET /api/audit-events over HTTP: the filtered list (a time window, a cursor), and the
checkpoint feed (`from_seq`, followed by `Link`)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from urllib.parse import urlencode

import asyncpg
import httpx
import orjson
import pytest

from app.audit.events import Actor, Event
from app.audit.record import record_events
from tests.audit.support import ACME, EVENT_FIELDS, GLOBEX, actions, seed, window
from tests.helpers import assert_problem


class TestListAuditEvents:
    async def test_anonymous(self, client: httpx.AsyncClient, owner: asyncpg.Connection) -> None:
        response = await client.get("/api/audit-events", params=window())
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer realm="api"'
        assert await actions(owner) == []

    async def test_missing_permission(
        self, client: httpx.AsyncClient, unprivileged: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        response = await client.get("/api/audit-events", params=window(), headers=unprivileged)
        assert_problem(response, 403)
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
        # The denial is on record (on its own connection); no read happened.
        row = await owner.fetchrow("SELECT * FROM audit_events")
        assert (row["action"], row["outcome"], row["actor"]) == (
            "access.denied",
            "denied",
            "auth0|clerk",
        )
        assert row["scope"] == ACME
        assert row["entity_id"] == "/api/audit-events"

    async def test_ok(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        patient = uuid.uuid4()
        created = Event(
            "patient.created",
            "C",
            entity_type="patient",
            entity_id=str(patient),
            patient_id=patient,
            detail={"fields": ["phone"]},
        )
        where = {"client_id": "spa", "source_ip": "198.51.100.4", "request_id": "r-1"}
        await seed(writer, ACME, created, sub="auth0|nurse", **where)
        await seed(writer, ACME, Event("patient.read", "R", patient_id=patient), sub="auth0|doc")
        response = await client.get("/api/audit-events", params=window(), headers=acme)
        assert response.status_code == 200
        body = response.json()
        assert body["next_cursor"] is None
        newest, oldest = body["items"]
        assert newest.keys() >= EVENT_FIELDS
        assert (newest["action"], oldest["action"]) == ("patient.read", "patient.created")
        expected = {
            "outcome": "success",
            "actor": "auth0|nurse",
            "client_id": "spa",
            "source_ip": "198.51.100.4",
            "entity_type": "patient",
            "entity_id": str(patient),
            "patient_id": str(patient),
            "request_id": "r-1",
            "detail": {"fields": ["phone"]},
        }
        assert {name: oldest[name] for name in expected} == expected
        # The query itself is on record, with what was asked and not the values.
        read = await owner.fetchrow(
            "SELECT *, detail::text AS d FROM audit_events ORDER BY seq DESC"
        )
        assert (read["action"], read["actor"], read["scope"]) == (
            "audit.read",
            "auth0|admin-acme",
            ACME,
        )
        assert read["request_id"] == response.headers["x-request-id"]
        assert orjson.loads(read["d"]) | {"since": None, "until": None} == {
            "view": "page",
            "returned": 2,
            "filters": [],
            "since": None,
            "until": None,
        }

    async def test_pages_with_a_cursor_newest_first(
        self, client: httpx.AsyncClient, writer: asyncpg.Pool, acme: dict[str, str]
    ) -> None:
        for i in range(7):
            await seed(writer, ACME, Event("patient.read", "R", entity_id=str(i)))
        seen: list[str] = []
        params = window(action="patient.read", limit=3)
        while True:
            body = (await client.get("/api/audit-events", params=params, headers=acme)).json()
            seen += [item["entity_id"] for item in body["items"]]
            if body["next_cursor"] is None:
                break
            params["cursor"] = body["next_cursor"]
        assert seen == [str(i) for i in reversed(range(7))]

    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ({"actor": "auth0|nurse"}, ["patient.created", "user.signed_in"]),
            ({"action": "patient.read"}, ["patient.read"]),
            ({"action": "patient.*"}, ["patient.read", "patient.created"]),
            ({"action": "patient.access.*"}, []),
            ({"outcome": "denied"}, ["access.denied"]),
            ({"request_id": "r-2"}, ["patient.read"]),
        ],
    )
    async def test_filters(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        params: dict[str, str],
        expected: list[str],
    ) -> None:
        await seed(writer, ACME, Event("user.signed_in", "E"), sub="auth0|nurse")
        await seed(writer, ACME, Event("patient.created", "C"), sub="auth0|nurse", request_id="r-1")
        await seed(writer, ACME, Event("patient.read", "R"), sub="auth0|doc", request_id="r-2")
        await seed(writer, ACME, Event("access.denied", "R", outcome="denied"), sub="auth0|x")
        await seed(writer, GLOBEX, Event("patient.read", "R"), sub="auth0|nurse", request_id="r-2")
        response = await client.get("/api/audit-events", params=window(**params), headers=acme)
        assert [item["action"] for item in response.json()["items"]] == expected

    async def test_filter_by_patient(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        patient, other = uuid.uuid4(), uuid.uuid4()
        reads = [Event("patient.read", "R", patient_id=p) for p in (patient, other)]
        await seed(writer, ACME, *reads)
        params = window(patient_id=str(patient))
        items = (await client.get("/api/audit-events", params=params, headers=acme)).json()["items"]
        assert [item["patient_id"] for item in items] == [str(patient)]
        # The read names the patient, so it shows in that patient's access report.
        read = await owner.fetchrow(
            "SELECT patient_id FROM audit_events WHERE action = 'audit.read'"
        )
        assert read["patient_id"] == patient

    async def test_another_scope_sees_nothing(
        self, client: httpx.AsyncClient, writer: asyncpg.Pool, globex: dict[str, str]
    ) -> None:
        await seed(writer, ACME, Event("patient.read", "R"))
        body = (await client.get("/api/audit-events", params=window(), headers=globex)).json()
        assert body == {"items": [], "next_cursor": None}

    async def test_a_cursor_from_another_scope_is_refused(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        globex: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        for _ in range(3):
            await seed(writer, ACME, Event("patient.read", "R"))
        params = window(limit=1)
        cursor = (await client.get("/api/audit-events", params=params, headers=acme)).json()[
            "next_cursor"
        ]
        assert cursor
        before = await actions(owner)
        response = await client.get(
            "/api/audit-events", params=params | {"cursor": cursor}, headers=globex
        )
        body = assert_problem(response, 400, "cursor")
        assert "another scope" in body["errors"][0]["message"]
        assert await actions(owner) == before

    @pytest.mark.parametrize(
        "tamper",
        [
            lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),
            lambda c: "not-a-cursor",
            lambda c: "",
        ],
    )
    async def test_a_forged_cursor_is_refused(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        tamper: Callable[[str], str],
    ) -> None:
        for _ in range(2):
            await seed(writer, ACME, Event("patient.read", "R"))
        params = window(limit=1)
        cursor = (await client.get("/api/audit-events", params=params, headers=acme)).json()[
            "next_cursor"
        ]
        before = await actions(owner)
        response = await client.get(
            "/api/audit-events", params=params | {"cursor": tamper(cursor)}, headers=acme
        )
        assert_problem(response, 400, "cursor")
        assert await actions(owner) == before

    async def test_a_cursor_for_other_filters_is_refused(
        self, client: httpx.AsyncClient, writer: asyncpg.Pool, acme: dict[str, str]
    ) -> None:
        for _ in range(2):
            await seed(writer, ACME, Event("patient.read", "R"))
        params = window(limit=1)
        cursor = (await client.get("/api/audit-events", params=params, headers=acme)).json()[
            "next_cursor"
        ]
        response = await client.get(
            "/api/audit-events",
            params=params | {"cursor": cursor, "outcome": "denied"},
            headers=acme,
        )
        assert_problem(response, 400, "cursor")

    @pytest.mark.parametrize(
        ("params", "status", "fields"),
        [
            ({"until": "2024-02-01T00:00:00Z"}, 422, ["since"]),
            ({"since": "2024-01-01T00:00:00Z"}, 422, ["until"]),
            ({}, 422, ["since", "until"]),
            ({"since": "2024-01-01T00:00:00Z", "until": "2024-02-01T00:00:01Z"}, 422, ["until"]),
            ({"since": "2024-01-02T00:00:00Z", "until": "2024-01-01T00:00:00Z"}, 422, ["until"]),
            ({"since": "2024-01-01T00:00:00", "until": "2024-01-02T00:00:00Z"}, 422, ["since"]),
            ({"since": "yesterday", "until": "2024-01-02T00:00:00Z"}, 422, ["since"]),
            ({"limit": "0"}, 422, ["limit"]),
            ({"limit": "201"}, 422, ["limit"]),
            ({"action": "patient.%"}, 422, ["action"]),
            ({"action": "Patient.Read"}, 422, ["action"]),
            ({"patient_id": "42"}, 422, ["patient_id"]),
            ({"outcome": "maybe"}, 422, ["outcome"]),
            ({"tenant": "globex"}, 422, ["tenant"]),
            ({"take": "5"}, 422, ["take"]),
        ],
    )
    async def test_invalid_query(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        params: dict[str, str],
        status: int,
        fields: list[str],
    ) -> None:
        base = {} if {"since", "until"} & params.keys() or not params else window()
        response = await client.get("/api/audit-events", params=base | params, headers=acme)
        assert_problem(response, status, *fields)
        assert await actions(owner) == []

    async def test_exactly_31_days_is_allowed(
        self, client: httpx.AsyncClient, acme: dict[str, str]
    ) -> None:
        params = {"since": "2024-01-01T00:00:00Z", "until": "2024-02-01T00:00:00Z"}
        response = await client.get("/api/audit-events", params=params, headers=acme)
        assert response.status_code == 200

    async def test_a_repeated_parameter_is_refused(
        self, client: httpx.AsyncClient, acme: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        query = urlencode(window()) + "&actor=a&actor=b"
        response = await client.get(f"/api/audit-events?{query}", headers=acme)
        assert_problem(response, 400, "actor")
        assert await actions(owner) == []

    @pytest.mark.parametrize(
        ("params", "status", "field"),
        [
            ({"actor": "auth0|a\x00b"}, 422, "actor"),
            ({"actor": "\x00"}, 422, "actor"),
            ({"actor": "auth0|\u202eevil"}, 422, "actor"),
            ({"request_id": "req\x00"}, 422, "request_id"),
            ({"request_id": "req\u2029"}, 422, "request_id"),
            ({"limit": "\u00b2"}, 422, "limit"),
            ({"cursor": "\x00"}, 400, "cursor"),
            ({"since": "0001-01-01T00:00:00+05:00", "until": "0001-01-02T00:00:00Z"}, 422, "since"),
            ({"since": "9999-12-31T00:00:00Z", "until": "9999-12-31T23:59:59-14:00"}, 422, "until"),
        ],
        ids=[
            "NUL in actor",
            "only NUL",
            "bidi override",
            "NUL in request_id",
            "paragraph separator",
            "superscript limit",
            "NUL cursor",
            "year 1 east of UTC",
            "year 10000 in UTC",
        ],
    )
    async def test_hostile_values_are_refused_naming_the_parameter(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        params: dict[str, str],
        status: int,
        field: str,
    ) -> None:
        response = await client.get("/api/audit-events", params=window() | params, headers=acme)
        assert_problem(response, status, field)
        assert await actions(owner) == []


class TestAuditEventsCheckpoint:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get("/api/audit-events", params={"from_seq": 0}), 401)

    async def test_missing_permission(
        self, client: httpx.AsyncClient, unprivileged: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        response = await client.get(
            "/api/audit-events", params={"from_seq": 0}, headers=unprivileged
        )
        assert_problem(response, 403)
        assert await actions(owner) == ["access.denied"]

    async def test_ok(
        self, client: httpx.AsyncClient, writer: asyncpg.Pool, acme: dict[str, str]
    ) -> None:
        for i in range(5):
            await seed(writer, ACME, Event("patient.read", "R", entity_id=str(i)))
            await seed(writer, GLOBEX, Event("patient.read", "R"))
        response = await client.get(
            "/api/audit-events", params={"from_seq": 0, "take": 3}, headers=acme
        )
        assert response.status_code == 200
        first = response.json()
        assert [i["entity_id"] for i in first["items"]] == ["0", "1", "2"]
        seqs = [i["seq"] for i in first["items"]]
        assert seqs == sorted(seqs) and first["next_from_seq"] == seqs[-1]
        assert (
            response.headers["link"]
            == f'</api/audit-events?from_seq={seqs[-1]}&take=3>; rel="next"'
        )
        following = response.headers["link"].split(">")[0].lstrip("<")
        second = (await client.get(following, headers=acme)).json()
        # The rest, then the first page's own audit.read; nothing of the other scope.
        assert [i["entity_id"] for i in second["items"]] == ["3", "4", None]
        assert second["items"][-1]["action"] == "audit.read"

    async def test_caught_up_returns_an_empty_page_and_the_same_position_or_later(
        self, client: httpx.AsyncClient, acme: dict[str, str]
    ) -> None:
        response = await client.get("/api/audit-events", params={"from_seq": 10**9}, headers=acme)
        assert response.json()["items"] == [] and response.json()["next_from_seq"] == 10**9
        assert "from_seq=1000000000" in response.headers["link"]

    @pytest.mark.parametrize(
        ("params", "fields"),
        [
            ({"from_seq": "-1"}, ["from_seq"]),
            ({"from_seq": "0", "take": "1001"}, ["take"]),
            ({"from_seq": "0", "since": "2024-01-01T00:00:00Z"}, ["since"]),
            ({"from_seq": "0", "actor": "x", "limit": "5"}, ["actor", "limit"]),
            ({"from_seq": "0", "cursor": "abc"}, ["cursor"]),
        ],
    )
    async def test_invalid_query(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        params: dict[str, str],
        fields: list[str],
    ) -> None:
        response = await client.get("/api/audit-events", params=params, headers=acme)
        assert_problem(response, 422, *fields)
        assert await actions(owner) == []

    async def test_a_puller_loses_nothing_while_writers_run(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        """Parallel writers in this scope and others, and a puller following `Link`: the
        puller ends up with exactly the scope's events, each once, in seq order."""
        done = asyncio.Event()
        rng = random.Random(7)

        async def write(n: int) -> None:
            for i in range(10):
                scope = ACME if (n + i) % 2 else GLOBEX
                async with writer.acquire() as conn, conn.transaction():
                    await record_events(conn, Actor(scope=scope), [Event("patient.read", "R")])
                    await asyncio.sleep(rng.random() * 0.01)

        async def pull() -> list[tuple[int, str]]:
            seen: list[tuple[int, str]] = []
            url = "/api/audit-events?from_seq=0&take=7"
            while True:
                finished = done.is_set()
                response = await client.get(url, headers=acme)
                items = response.json()["items"]
                seen += [(item["seq"], item["action"]) for item in items]
                url = response.headers["link"].split(">")[0].lstrip("<")
                # Each pull is itself recorded, so the feed never runs dry: stop when only
                # the previous pull's own record came back.
                if finished and all(item["action"] == "audit.read" for item in items):
                    return seen
                await asyncio.sleep(0.005)

        puller = asyncio.create_task(pull())
        await asyncio.gather(*(write(n) for n in range(8)))
        done.set()
        seen = await puller
        stored = await owner.fetch(
            "SELECT seq FROM audit_events WHERE scope = $1 ORDER BY seq", ACME
        )
        # Everything but the puller's own last audit.read, which came after its last page.
        assert [seq for seq, _ in seen] == [r["seq"] for r in stored][:-1]
        assert sum(1 for _, action in seen if action == "patient.read") == 40
