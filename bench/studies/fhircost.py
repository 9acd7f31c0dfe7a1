"""What a FHIR page of the audit log costs against the JSON page of the same events.

    python -m bench.studies.fhircost [--events 5000] [--calls 200]

Provisions a throwaway database (dropped at the end) and writes `--events` events into one
scope over the last hour: reads of one patient, and every tenth a search that showed 20
patients (so it maps to 20 AuditEvent resources). Then, on the app itself (in process,
behind httpx's ASGI transport, the tenant's JWKS stubbed), it alternates

- `GET /api/audit-events?limit=50` (our JSON page),
- `GET /fhir/AuditEvent?_count=50` (a Bundle of 50 resources, searches expanded),
- `GET /fhir/AuditEvent?_count=50&action=R` (50 resources from 50 events, no expansion),

each over the same one-hour window and each recorded as an `audit.read`, and prints the
median wall time and this process's CPU time per request, then the cost of encoding alone
(the 51 rows a page reads, to the response body). Figures only; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import orjson
import respx
from asgi_lifespan import LifespanManager

from app.audit.query import AuditFilters, event_item, fetch_page
from app.core.db import asyncpg_dsn
from app.core.settings import Settings
from app.fhir.bundle import page_of, searchset
from app.fhir.mapping import AuditEventMapper
from app.main import create_app
from devkit.db import LOCAL_SERVER_URL, drop, provision
from devkit.keys import TokenMinter

DOMAIN = "fhircost.local"
TENANT_URL = "https://fhircost-tenant.stub"
AUDIENCE = "https://fhircost.api"
ORG = "fhircost"
SCOPE = f"org:{ORG}"


async def _seed(owner: asyncpg.Connection, count: int, now: datetime) -> None:
    rows = []
    for i in range(count):
        search = i % 10 == 0
        patient = None if search else uuid.uuid4()
        detail = (
            {"filters": ["name"], "patient_ids": [str(uuid.uuid4()) for _ in range(20)]}
            if search
            else {"via": "get"}
        )
        rows.append(
            (
                f"auth0|user-{i % 7}",
                "patient.searched" if search else "patient.read",
                "E" if search else "R",
                str(patient) if patient else None,
                patient,
                f"req-{i}",
                orjson.dumps(detail).decode(),
                hashlib.sha256(str(i).encode()).digest(),
                now - timedelta(hours=1) * (i + 1) / (count + 1),
            )
        )
    await owner.executemany(
        """
        INSERT INTO audit_events (scope, actor, client_id, source_ip, user_agent, action, crud,
            outcome, entity_type, entity_id, patient_id, request_id, detail, hash, recorded_at,
            occurred_at)
        VALUES ($10, $1, 'spa', '203.0.113.7', 'bench', $2, $3, 'success', 'Patient', $4, $5,
            $6, $7::jsonb, $8, $9, $9)
        """,
        [(*row, SCOPE) for row in rows],
    )
    await owner.execute(
        "INSERT INTO audit_event_patients (seq, recorded_at, patient_ids)"
        " SELECT seq, recorded_at, ARRAY(SELECT audit_event_patient_ids(patient_id, detail))"
        " FROM audit_events WHERE patient_id IS NOT NULL OR detail ? 'patient_ids'"
    )
    await owner.execute("ANALYZE")


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def _requests(http: httpx.AsyncClient, token: str, now: datetime, calls: int) -> None:
    since, until = now - timedelta(hours=2), now + timedelta(minutes=5)
    window = {"since": since.isoformat(), "until": until.isoformat()}
    dates = [("date", "ge" + since.strftime("%Y-%m-%dT%H:%M:%SZ"))]
    dates.append(("date", "lt" + until.strftime("%Y-%m-%dT%H:%M:%SZ")))
    cases: dict[str, tuple[str, list[tuple[str, str]]]] = {
        "JSON page, `limit=50`": ("/api/audit-events", [*window.items(), ("limit", "50")]),
        "FHIR page, `_count=50`": ("/fhir/AuditEvent", [*dates, ("_count", "50")]),
        "FHIR page, `_count=50&action=R`": (
            "/fhir/AuditEvent",
            [*dates, ("_count", "50"), ("action", "R")],
        ),
    }
    headers = {"Authorization": f"Bearer {token}"}
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(calls + 20):
        for name, (path, params) in cases.items():  # interleaved: drift hits all alike
            started, used = time.perf_counter(), time.process_time()
            response = await http.get(path, params=params, headers=headers)
            elapsed, spent = time.perf_counter() - started, time.process_time() - used
            assert response.status_code == 200, response.text
            if round_ >= 20:  # after a warm-up
                wall[name].append(elapsed)
                cpu[name].append(spent)
    json_wall = _median_us(wall["JSON page, `limit=50`"])
    json_cpu = _median_us(cpu["JSON page, `limit=50`"])
    print("| request | median wall (µs) | median CPU of this process (µs) | vs JSON (wall, CPU) |")
    print("|---|---:|---:|---:|")
    for name in cases:
        w, c = _median_us(wall[name]), _median_us(cpu[name])
        print(f"| {name} | {w:,.0f} | {c:,.0f} | {w / json_wall:.2f}x, {c / json_cpu:.2f}x |")


async def _encoding(app_url: str, now: datetime, calls: int) -> None:
    """The body alone, from the rows a page reads: event_item + orjson against the mapping."""
    conn = await asyncpg.connect(asyncpg_dsn(app_url))
    try:
        filters = AuditFilters(SCOPE, now - timedelta(hours=2), now + timedelta(minutes=5))
        async with conn.transaction():
            rows, _ = await fetch_page(conn, filters, limit=51)
    finally:
        await conn.close()
    mapper = AuditEventMapper(f"https://{DOMAIN}/", AUDIENCE)

    def json_body() -> bytes:
        return orjson.dumps({"items": [event_item(r) for r in rows[:50]], "next_cursor": "c"})

    def fhir_body() -> bytes:
        page, _ = page_of(rows, mapper, count=50, start=None, only_patient=None, more=True)
        return orjson.dumps(searchset("http://h/fhir", page, [], cursor=None, next_cursor="c"))

    encoders: dict[str, Callable[[], bytes]] = {"JSON body": json_body, "FHIR body": fhir_body}
    samples: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(calls + 20):
        for name, encode in encoders.items():
            started = time.process_time()
            encode()
            samples[name].append(time.process_time() - started)
    print("\n| encoding a page of 50 | median CPU (µs) | body (bytes) |")
    print("|---|---:|---:|")
    for name, encode in encoders.items():
        print(f"| {name} | {_median_us(samples[name][20:]):,.0f} | {len(encode()):,} |")


async def main(events: int, calls: int) -> None:
    db = await provision(LOCAL_SERVER_URL)
    try:
        now = datetime.now(UTC)
        owner = await asyncpg.connect(asyncpg_dsn(db.owner_url))
        try:
            await _seed(owner, events, now)
        finally:
            await owner.close()
        minter = TokenMinter(DOMAIN, AUDIENCE)
        settings = Settings(
            database_url=db.app_url,
            migrations_database_url=db.owner_url,
            auth0_domain=DOMAIN,
            auth0_audience=AUDIENCE,
            auth0_client_id="fhircost-client",
            auth0_client_secret="fhircost-secret",
            app_secret_key="0123456789abcdef0123456789abcdef-test",
            auth0_base_url=TENANT_URL,
            rate_limit_per_ip="off",
            rate_limit_per_user="off",
            log_level="WARNING",
            _env_file=None,
        )
        token = minter.mint("auth0|auditor", permissions=["read:audit_events"], org_id=ORG)
        with respx.mock(base_url=TENANT_URL, assert_all_called=False) as tenant:
            tenant.get("/.well-known/jwks.json").mock(
                side_effect=lambda request: httpx.Response(200, json=minter.jwks())
            )
            app = create_app(settings)
            async with LifespanManager(app) as manager:
                transport = httpx.ASGITransport(app=manager.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://h") as http:
                    print(f"{events:,} events in one scope, {calls} calls each\n")
                    await _requests(http, token, now, calls)
        await _encoding(db.app_url, now, calls)
    finally:
        await drop(db)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.calls))
