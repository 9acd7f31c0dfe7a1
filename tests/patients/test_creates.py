"""The group commit of creates (app/patients/creates.py), against a real database as the
application role: creates that wait together commit together, each row with its one
`patient.created` event; a taken identifier is refused for one request only; a bad row
fails alone; an outage fails every waiter and writes nothing; and through the API,
concurrent POSTs each get their own patient, and a duplicate in the same batch a 409."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
from databases import Database

from app.audit.events import Actor
from app.audit.verify import verify_chain
from app.core.errors import DatabaseUnavailable
from app.patients.creates import CreateWriter
from app.patients.events import created_event
from devkit.db import ProvisionedDatabase

SCOPES = [f"org:creates-{n}" for n in range(3)]
SINCE = datetime.now(UTC) - timedelta(days=1)
UNTIL = datetime.now(UTC) + timedelta(days=1)


def actor(n: int) -> Actor:
    return Actor(scope=SCOPES[n % 3], sub=f"auth0|user-{n}", request_id=f"req-{n}")


def fields(n: int, identifier: str | None = None, **more: Any) -> dict[str, Any]:
    return {
        "identifier": {"system": "urn:mrn", "value": identifier or f"mrn-{n}"},
        "given_name": f"Given{n}",
        "family_name": "Family",
        "birth_date": date(1980, 1, 1 + n % 28),
        "gender": "unknown",
        "active": True,
    } | more


async def create(writer: CreateWriter, n: int, **kwargs: Any) -> asyncpg.Record | None:
    patient_id = uuid.uuid4()
    body = fields(n, **kwargs)
    event = created_event(patient_id, body)
    return await writer.create(
        patient_id, actor(n).scope, actor(n).sub or "", body, actor(n), event
    )


async def stored(owner: asyncpg.Connection) -> tuple[set[str], list[asyncpg.Record]]:
    patients = {str(r["id"]) for r in await owner.fetch("SELECT id FROM patients")}
    events = await owner.fetch(
        "SELECT patient_id, request_id, action FROM audit_events ORDER BY seq"
    )
    return patients, events


async def chains_intact(owner: asyncpg.Connection) -> None:
    for scope in await owner.fetch("SELECT DISTINCT scope FROM audit_events"):
        report = await verify_chain(owner, scope["scope"], SINCE, UNTIL)
        assert report.status == "intact", (scope["scope"], report)


class TestBatching:
    async def test_concurrent_creates_commit_together_each_with_its_event(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        writer = CreateWriter(pool)
        rows = await asyncio.gather(*(create(writer, n) for n in range(30)))
        assert writer.requests == 30
        assert writer.batches < 30  # creates waiting together went in one transaction
        patients, events = await stored(owner)
        assert {str(r["id"]) for r in rows if r is not None} == patients
        assert len(patients) == 30
        # One event per patient, carrying the request that made it.
        assert sorted(str(e["patient_id"]) for e in events) == sorted(patients)
        assert {e["action"] for e in events} == {"patient.created"}
        by_patient = {str(e["patient_id"]): e["request_id"] for e in events}
        for n, row in enumerate(rows):
            assert row is not None and row["given_name"] == f"Given{n}"
            assert by_patient[str(row["id"])] == f"req-{n}"
        await chains_intact(owner)

    async def test_one_create_alone_is_one_statement(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        writer = CreateWriter(pool)
        row = await create(writer, 1)
        assert row is not None and (writer.batches, writer.requests) == (1, 1)
        patients, events = await stored(owner)
        assert patients == {str(row["id"])} and len(events) == 1

    async def test_a_taken_identifier_in_the_same_batch_is_refused_for_one_only(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        writer = CreateWriter(pool, max_in_flight=1)
        first = asyncio.create_task(create(writer, 0))  # alone: the next ones queue behind it
        await asyncio.sleep(0)
        same = [create(writer, 3, identifier="mrn-dup"), create(writer, 6, identifier="mrn-dup")]
        rows = await asyncio.gather(first, *same, create(writer, 9))
        assert writer.batches == 2  # the first alone, then the other three together
        # Scopes 3 and 6 are the same scope (n % 3 == 0): one of the two is not inserted.
        assert rows[0] is not None and rows[3] is not None
        assert [r is None for r in rows[1:3]] == [False, True]
        patients, events = await stored(owner)
        assert len(patients) == 3 and len(events) == 3  # nothing written for the refused one
        assert "req-6" not in {e["request_id"] for e in events}
        await chains_intact(owner)


class TestFailures:
    async def test_a_bad_row_fails_alone(self, pool: Database, owner: asyncpg.Connection) -> None:
        writer = CreateWriter(pool, max_in_flight=1)
        first = asyncio.create_task(create(writer, 0))
        await asyncio.sleep(0)
        # Longer than the column's CHECK allows: only the database finds it out.
        results = await asyncio.gather(
            first,
            *(create(writer, n) for n in range(1, 5)),
            create(writer, 99, given_name="x" * 201),
            *(create(writer, n) for n in range(5, 9)),
            return_exceptions=True,
        )
        assert isinstance(results[5], asyncpg.CheckViolationError)
        assert all(isinstance(r, asyncpg.Record) for i, r in enumerate(results) if i != 5)
        patients, events = await stored(owner)
        assert len(patients) == 9 and len(events) == 9
        assert "req-99" not in {e["request_id"] for e in events}
        await chains_intact(owner)

    async def test_an_outage_fails_every_waiter_and_writes_nothing(
        self, pool: Database, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        writer = CreateWriter(pool)
        await create(writer, 0)  # the pool holds a live connection now
        admin = await asyncpg.connect(database.admin_url)
        try:
            await admin.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND usename = $2",
                database.name,
                database.app_role,
            )
            results = await asyncio.gather(
                *(create(writer, n) for n in range(1, 9)), return_exceptions=True
            )
            assert all(isinstance(r, DatabaseUnavailable) for r in results), results
        finally:
            await admin.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS true')
            await admin.close()
        await create(writer, 9)  # no restart: the pool reconnects
        patients, events = await stored(owner)
        assert len(patients) == 2
        assert {e["request_id"] for e in events} == {"req-0", "req-9"}
        await chains_intact(owner)
