"""The audit endpoints over HTTP: query, checkpoint feed, export, verify, access report."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import random
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import orjson
import pytest
import respx
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp

from app.audit.events import Actor, Event
from app.audit.record import record_events
from app.core.db import asyncpg_dsn
from app.core.settings import Settings
from app.dev.db import ProvisionedDatabase
from app.main import create_app
from tests.helpers import assert_problem, bearer

EXPORT = "/api/audit-events/export"
READ = ["read:audit_events"]
ACME, GLOBEX = "org:acme", "org:globex"
# The audit event shape API.md fixes (more fields may be added).
EVENT_FIELDS = {
    *("seq", "id", "recorded_at", "action", "outcome", "actor", "client_id", "source_ip"),
    *("entity_type", "entity_id", "patient_id", "request_id", "detail"),
}


@pytest.fixture
async def writer(database: ProvisionedDatabase) -> AsyncIterator[asyncpg.Pool]:
    """The application role, for writing events the way the service does."""
    pool = await asyncpg.create_pool(asyncpg_dsn(database.app_url), min_size=1, max_size=20)
    yield pool
    await pool.close()


@pytest.fixture
def acme(mint: Callable[..., str]) -> dict[str, str]:
    return bearer(mint(sub="auth0|admin-acme", permissions=READ, org_id="acme"))


@pytest.fixture
def globex(mint: Callable[..., str]) -> dict[str, str]:
    return bearer(mint(sub="auth0|admin-globex", permissions=READ, org_id="globex"))


@pytest.fixture
def unprivileged(mint: Callable[..., str]) -> dict[str, str]:
    return bearer(mint(sub="auth0|clerk", permissions=["read:patients"], org_id="acme"))


async def seed(pool: asyncpg.Pool, scope: str, *events: Event, **actor: Any) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await record_events(conn, Actor(scope=scope, **actor), events)


async def actions(owner: asyncpg.Connection) -> list[str]:
    """Every stored action, in seq order: what a test checks was (or was not) recorded."""
    return [r["action"] for r in await owner.fetch("SELECT action FROM audit_events ORDER BY seq")]


def window(**extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    since, until = (now - timedelta(days=1)).isoformat(), (now + timedelta(days=1)).isoformat()
    return {"since": since, "until": until, **extra}


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


async def bulk_seed(
    owner: asyncpg.Connection, scope: str, count: int, *, actor: str = "auth0|u"
) -> None:
    """Many events fast (as the owner, hashes not chained: for reading, not verifying)."""
    await owner.execute(
        """
        INSERT INTO audit_events (scope, actor, client_id, source_ip, user_agent, action, crud,
            outcome, entity_type, entity_id, patient_id, request_id, detail, hash, recorded_at,
            occurred_at)
        SELECT $1, $3 || (g % 50), 'spa', '203.0.113.7', 'Mozilla/5.0 (X11; Linux x86_64)',
            'patient.read', 'R', 'success', 'patient', gen_random_uuid()::text,
            gen_random_uuid(), 'req-' || g, '{"fields": ["given_name", "family_name"]}',
            sha256(g::text::bytea), now() - g * interval '1 ms', now() - g * interval '1 ms'
        FROM generate_series(1, $2) AS g
        """,
        scope,
        count,
        actor,
    )


class TestExportAuditEvents:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get("/api/audit-events/export", params=window()), 401)

    async def test_missing_permission(
        self, client: httpx.AsyncClient, unprivileged: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        response = await client.get(
            "/api/audit-events/export", params=window(), headers=unprivileged
        )
        assert_problem(response, 403)
        assert await actions(owner) == ["access.denied"]

    async def test_ok(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        for i in range(3):
            await seed(writer, ACME, Event("patient.read", "R", entity_id=str(i)), sub="auth0|doc")
        await seed(writer, GLOBEX, Event("patient.read", "R"))
        response = await client.get("/api/audit-events/export", params=window(), headers=acme)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        assert 'filename="audit-events.ndjson"' in response.headers["content-disposition"]
        lines = [orjson.loads(line) for line in response.text.splitlines()]
        # Oldest first, this scope only, ending with the export's own record.
        assert [line["entity_id"] for line in lines] == ["0", "1", "2", None]
        assert lines[-1]["action"] == "audit.exported"
        assert all(line.keys() >= EVENT_FIELDS for line in lines)
        exported = await owner.fetchrow(
            "SELECT *, detail::text AS d FROM audit_events WHERE action = 'audit.exported'"
        )
        assert exported["scope"] == ACME and orjson.loads(exported["d"])["format"] == "ndjson"

    async def test_csv(
        self, client: httpx.AsyncClient, writer: asyncpg.Pool, acme: dict[str, str]
    ) -> None:
        await seed(
            writer,
            ACME,
            Event("patient.read", "R", entity_id="e,1", detail={"a": "b"}),
            sub="auth0|doc",
        )
        response = await client.get(
            "/api/audit-events/export", params=window(format="csv"), headers=acme
        )
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        header, row, exported = list(csv.reader(io.StringIO(response.text)))
        assert exported[header.index("action")] == "audit.exported"
        record = dict(zip(header, row, strict=True))
        assert set(header) >= EVENT_FIELDS
        assert (record["entity_id"], record["actor"], record["detail"]) == (
            "e,1",
            "auth0|doc",
            '{"a": "b"}',
        )

    async def test_csv_cells_cannot_become_formulas(
        self, client: httpx.AsyncClient, writer: asyncpg.Pool, acme: dict[str, str]
    ) -> None:
        hostile = ['=HYPERLINK("http://evil")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
        for value in hostile:
            event = Event("patient.read", "R", entity_id=value)
            await seed(writer, ACME, event, sub=value, user_agent=value)
        response = await client.get(
            "/api/audit-events/export", params=window(format="csv"), headers=acme
        )
        header, *rows, _ = list(csv.reader(io.StringIO(response.text, newline="")))
        for value, row in zip(hostile, rows, strict=True):
            record = dict(zip(header, row, strict=True))
            for column in ("entity_id", "actor", "user_agent"):
                assert record[column] == "'" + value
        # NDJSON is data, not a spreadsheet: values stay as they are.
        ndjson = await client.get("/api/audit-events/export", params=window(), headers=acme)
        actors = [orjson.loads(line)["actor"] for line in ndjson.text.splitlines()]
        assert actors[: len(hostile)] == hostile

    async def test_another_scope_exports_nothing(
        self, client: httpx.AsyncClient, writer: asyncpg.Pool, globex: dict[str, str]
    ) -> None:
        await seed(writer, ACME, Event("patient.read", "R"))
        response = await client.get("/api/audit-events/export", params=window(), headers=globex)
        assert response.status_code == 200
        (line,) = [orjson.loads(line) for line in response.text.splitlines()]
        assert (line["action"], line["actor"]) == ("audit.exported", "auth0|admin-globex")

    @pytest.mark.parametrize(
        ("params", "fields"),
        [
            ({"format": "xlsx"}, ["format"]),
            ({"since": None}, ["since"]),
            ({"until": "2099-01-01T00:00:00Z"}, ["until"]),
            ({"limit": "5"}, ["limit"]),
        ],
    )
    async def test_invalid_query(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        params: dict[str, Any],
        fields: list[str],
    ) -> None:
        query = {k: v for k, v in (window() | params).items() if v is not None}
        response = await client.get("/api/audit-events/export", params=query, headers=acme)
        assert_problem(response, 422, *fields)
        assert await actions(owner) == []

    async def test_100k_events_stream_in_bounded_memory(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        await bulk_seed(owner, ACME, 100_000)
        newest: datetime = await owner.fetchval("SELECT max(recorded_at) FROM audit_events")
        token = mint(sub="auth0|admin-acme", permissions=READ, org_id="acme")
        async with LifespanManager(create_app(settings)) as manager:
            since = (newest - timedelta(seconds=20)).isoformat()
            small = await stream(manager.app, window(since=since), token)
            large = await stream(manager.app, window(), token)
        assert small.status == large.status == 200
        assert 20_000 <= small.lines <= 20_002
        assert large.lines >= 100_000 and large.bytes > 50_000_000
        # Five times the events, about the same memory: it does not grow with the count.
        # (Holding the rows instead costs about 150 MB here.)
        assert large.peak < small.peak + 8_000_000
        assert large.peak < 16_000_000 < large.bytes / 3


class Streamed:
    status = 0
    lines = 0
    bytes = 0
    peak = 0


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(key)


@contextlib.contextmanager
def peak_memory(result: Streamed) -> Iterator[None]:
    """The growth of this process's peak resident memory while the block runs (Linux: the
    high-water mark is reset through clear_refs), else the peak traced by tracemalloc."""
    try:
        baseline = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        tracemalloc.start()
        try:
            yield
            result.peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return
    yield
    result.peak = _status_bytes("VmHWM") - baseline


async def stream(app: ASGIApp, params: dict[str, str], token: str) -> Streamed:
    """Drive the ASGI app directly, counting the body as it streams and then dropping it
    (httpx's ASGI transport would keep all of it), and measure the peak memory."""
    result = Streamed()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            result.bytes += len(body)
            result.lines += body.count(b"\n")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": EXPORT,
        "raw_path": EXPORT.encode(),
        "query_string": urlencode(params).encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    with peak_memory(result):
        await app(scope, receive, send)  # type: ignore[arg-type]
    return result


class TestVerifyAuditEvents:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get("/api/audit-events/verify", params=window()), 401)

    async def test_missing_permission(
        self, client: httpx.AsyncClient, unprivileged: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        response = await client.get(
            "/api/audit-events/verify", params=window(), headers=unprivileged
        )
        assert_problem(response, 403)
        assert await actions(owner) == ["access.denied"]

    async def test_ok(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        for _ in range(4):
            await seed(writer, ACME, Event("patient.read", "R"))
        response = await client.get("/api/audit-events/verify", params=window(), headers=acme)
        assert response.status_code == 200
        body = response.json()
        assert (body["status"], body["count"]) == ("intact", 4)
        assert body["broken_seq"] is None
        assert (await actions(owner))[-1] == "audit.verified"

    async def test_finds_a_row_the_owner_edited(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        globex: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        for _ in range(4):
            await seed(writer, ACME, Event("patient.read", "R"))
            await seed(writer, GLOBEX, Event("patient.read", "R"))
        target = await owner.fetchrow(
            "SELECT seq, id, tableoid::regclass::text AS part FROM audit_events "
            "WHERE scope = $1 ORDER BY seq OFFSET 2 LIMIT 1",
            ACME,
        )
        # Only the owner can do this, and only with the trigger off on the row's partition.
        await owner.execute(f"ALTER TABLE {target['part']} DISABLE TRIGGER USER")
        await owner.execute(
            "UPDATE audit_events SET outcome = 'denied' WHERE seq = $1", target["seq"]
        )
        await owner.execute(f"ALTER TABLE {target['part']} ENABLE TRIGGER USER")
        body = (await client.get("/api/audit-events/verify", params=window(), headers=acme)).json()
        assert (body["status"], body["count"]) == ("broken", 2)
        assert (body["broken_seq"], body["broken_id"]) == (target["seq"], str(target["id"]))
        assert "contents" in body["reason"]
        other = (
            await client.get("/api/audit-events/verify", params=window(), headers=globex)
        ).json()
        assert (other["status"], other["count"]) == ("intact", 4)

    async def test_window_over_31_days(
        self, client: httpx.AsyncClient, acme: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        params = {"since": "2024-01-01T00:00:00Z", "until": "2024-03-01T00:00:00Z"}
        response = await client.get("/api/audit-events/verify", params=params, headers=acme)
        assert_problem(response, 422, "until")
        assert await actions(owner) == []


class TestPatientAccessReport:
    def url(self, patient: uuid.UUID) -> str:
        return f"/api/patients/{patient}/access-report"

    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get(self.url(uuid.uuid4())), 401)

    async def test_missing_permission(
        self, client: httpx.AsyncClient, unprivileged: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        patient = uuid.uuid4()
        assert_problem(await client.get(self.url(patient), headers=unprivileged), 403)
        # The refused look at this patient's trail is itself about the patient.
        assert await owner.fetchval("SELECT patient_id FROM audit_events") == patient

    async def test_ok(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        patient, other = uuid.uuid4(), uuid.uuid4()
        await seed(
            writer, ACME, Event("patient.created", "C", patient_id=patient), sub="auth0|nurse"
        )
        await seed(writer, ACME, Event("patient.read", "R", patient_id=other), sub="auth0|doc")
        await seed(writer, ACME, Event("patient.read", "R", patient_id=patient), sub="auth0|doc")
        await seed(
            writer,
            ACME,
            Event("patient.read", "R", outcome="denied", patient_id=patient),
            sub="auth0|x",
        )
        await seed(writer, GLOBEX, Event("patient.read", "R", patient_id=patient), sub="auth0|spy")
        response = await client.get(self.url(patient), headers=acme)
        assert response.status_code == 200
        body = response.json()
        assert [(i["actor"], i["action"], i["outcome"]) for i in body["items"]] == [
            ("auth0|nurse", "patient.created", "success"),
            ("auth0|doc", "patient.read", "success"),
            ("auth0|x", "patient.read", "denied"),
        ]
        assert body["next_cursor"] is None
        # Looking at the report is on the patient's record too.
        again = (await client.get(self.url(patient), headers=acme)).json()["items"]
        assert again[-1]["action"] == "audit.read" and again[-1]["actor"] == "auth0|admin-acme"

    async def test_pages_with_a_cursor_bound_to_the_patient(
        self, client: httpx.AsyncClient, writer: asyncpg.Pool, acme: dict[str, str]
    ) -> None:
        patient = uuid.uuid4()
        for i in range(5):
            await seed(
                writer, ACME, Event("patient.read", "R", patient_id=patient, entity_id=str(i))
            )
        first = (await client.get(self.url(patient), params={"limit": 3}, headers=acme)).json()
        assert [i["entity_id"] for i in first["items"]] == ["0", "1", "2"]
        params = {"limit": 3, "cursor": first["next_cursor"]}
        second = (await client.get(self.url(patient), params=params, headers=acme)).json()
        assert [i["entity_id"] for i in second["items"]] == ["3", "4", str(patient)]
        elsewhere = await client.get(self.url(uuid.uuid4()), params=params, headers=acme)
        assert_problem(elsewhere, 400, "cursor")

    async def test_not_a_uuid_is_404(
        self, client: httpx.AsyncClient, acme: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        assert_problem(await client.get("/api/patients/42/access-report", headers=acme), 404)
        assert await actions(owner) == []

    async def test_invalid_query(
        self, client: httpx.AsyncClient, acme: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        response = await client.get(self.url(uuid.uuid4()), params={"limit": 500}, headers=acme)
        assert_problem(response, 422, "limit")
        assert await actions(owner) == []
