"""GET /api/audit-events/export over HTTP: NDJSON and CSV, and 100k events streamed in
bounded memory."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import orjson
import pytest
import respx
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp

from app.audit.events import Event
from app.core.settings import Settings
from app.main import create_app
from tests.audit.support import ACME, EVENT_FIELDS, GLOBEX, READ, actions, seed, window
from tests.helpers import assert_problem

EXPORT = "/api/audit-events/export"


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

    @pytest.mark.parametrize("fmt", ["ndjson", "csv", "fhir-ndjson"])
    @pytest.mark.parametrize(
        ("params", "field"),
        [({"actor": "\x00"}, "actor"), ({"request_id": "a\x00b"}, "request_id")],
        ids=["NUL actor", "NUL request_id"],
    )
    async def test_a_control_character_is_refused_before_anything_is_sent(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        params: dict[str, str],
        field: str,
        fmt: str,
    ) -> None:
        await seed(writer, ACME, Event("patient.read", "R"), sub="auth0|doc")
        query = window() | params | {"format": fmt}
        response = await client.get("/api/audit-events/export", params=query, headers=acme)
        assert_problem(response, 422, field)
        assert await actions(owner) == ["patient.read"]  # not even audit.exported

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
