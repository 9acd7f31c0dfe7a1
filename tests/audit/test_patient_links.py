"""One audit event per request: "who saw this patient" stays one indexed lookup,
for search pages, the profile page and single reads alike, old events included."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app.audit.events import Actor, Event
from app.audit.record import record_events
from app.audit.verify import verify_chain
from app.core.db import asyncpg_dsn, discover_migrations, migrate
from app.core.settings import Settings
from devkit.db import ProvisionedDatabase, with_credentials
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem, bearer

USER = "auth0|nurse-1"
SCOPE = f"user:{USER}"


def window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "since": (now - timedelta(hours=1)).isoformat(),
        "until": (now + timedelta(hours=1)).isoformat(),
    }


async def insert_patients(owner: asyncpg.Connection, count: int) -> None:
    await owner.executemany(
        "INSERT INTO patients (scope, created_by, given_name, family_name, birth_date,"
        " created_at) VALUES ($1, 'seed', $2, 'Tester', '1980-01-01', now() - $3 * interval '1s')",
        [(SCOPE, f"Given{i}", i) for i in range(count)],
    )


class TestWhoSawThisPatient:
    async def test_a_patient_on_page_3_of_a_search_is_in_its_trail(
        self, client: httpx.AsyncClient, mint: Callable[..., str], owner: asyncpg.Connection
    ) -> None:
        await insert_patients(owner, 50)
        headers = bearer(mint(USER))
        pages: list[list[str]] = []
        params: dict[str, Any] = {"limit": 20, "name": "giv"}
        for _ in range(3):
            response = await client.get("/api/patients", params=params, headers=headers)
            assert response.status_code == 200, response.text
            body = response.json()
            pages.append([p["id"] for p in body["items"]])
            params["cursor"] = body["next_cursor"]
        assert [len(p) for p in pages] == [20, 20, 10]
        seen = pages[2][4]
        searches = await owner.fetch(
            "SELECT seq, detail::text AS detail FROM audit_events"
            " WHERE action = 'patient.searched' ORDER BY seq"
        )
        assert [orjson.loads(s["detail"])["patient_ids"] for s in searches] == pages
        page_3_seq = searches[2]["seq"]

        report = await client.get(f"/api/patients/{seen}/access-report", headers=headers)
        assert report.status_code == 200, report.text
        assert [(i["seq"], i["action"], i["actor"]) for i in report.json()["items"]] == [
            (page_3_seq, "patient.searched", USER)
        ]
        query = await client.get(
            "/api/audit-events", params={**window(), "patient_id": seen}, headers=headers
        )
        assert query.status_code == 200, query.text
        # Newest first: the access report's own read of the trail, then the page that showed it.
        assert [(i["action"], i["seq"]) for i in query.json()["items"]][1:] == [
            ("patient.searched", page_3_seq)
        ]
        assert query.json()["items"][0]["action"] == "audit.read"
        # A patient the searches never showed has an empty trail.
        never = await owner.fetchval(
            "SELECT id::text FROM patients WHERE NOT (id::text = ANY($1::text[])) LIMIT 1",
            [i for p in pages for i in p],
        )
        assert never is None  # all 50 were shown across the three pages

    async def test_single_reads_and_searches_interleave_in_the_trail(
        self, client: httpx.AsyncClient, mint: Callable[..., str], owner: asyncpg.Connection
    ) -> None:
        await insert_patients(owner, 3)
        headers = bearer(mint(USER))
        first = (await client.get("/api/patients", headers=headers)).json()["items"][0]["id"]
        assert (await client.get(f"/api/patients/{first}", headers=headers)).status_code == 200
        assert (await client.get("/api/patients", headers=headers)).status_code == 200
        report = (await client.get(f"/api/patients/{first}/access-report", headers=headers)).json()
        actions = [i["action"] for i in report["items"]]
        assert actions[:2] == ["patient.searched", "patient.read"]
        assert actions[-1] == "patient.searched"
        seqs = [i["seq"] for i in report["items"]]
        assert seqs == sorted(seqs)

    async def test_a_read_whose_event_cannot_be_written_is_503_and_shows_nothing(
        self,
        database: ProvisionedDatabase,
        mint: Callable[..., str],
        tenant: Any,
        owner: asyncpg.Connection,
    ) -> None:
        await insert_patients(owner, 2)
        settings: Settings = make_settings(database, db_statement_timeout_ms=300)
        blocker = await asyncpg.connect(asyncpg_dsn(database.owner_url))
        try:
            async with running_app(settings) as client:
                # Hold the scope's chain lock: the page is read, its event cannot be appended.
                await blocker.execute("BEGIN")
                await blocker.execute(
                    "SELECT pg_advisory_xact_lock(x'41554448'::integer, hashtext($1))", SCOPE
                )
                response = await client.get("/api/patients", headers=bearer(mint(USER)))
                await blocker.execute("ROLLBACK")
        finally:
            await blocker.close()
        assert_problem(response, 503)
        assert "Given" not in response.text
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0
        assert await owner.fetchval("SELECT count(*) FROM audit_event_patients") == 0


class TestMigration:
    async def test_existing_per_patient_events_are_linked_and_the_chain_holds(
        self, postgres_server: str
    ) -> None:
        name = f"bff_migrate_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(asyncpg_dsn(postgres_server))
        await admin.execute(f'CREATE DATABASE "{name}"')
        owner_url = with_credentials(postgres_server, database=name)
        try:
            before = [m for m in discover_migrations() if m.version < "0008"]
            await migrate(owner_url, before)
            conn = await asyncpg.connect(asyncpg_dsn(owner_url))
            try:
                patients = [asyncpg.pgproto.pgproto.UUID(secrets.token_bytes(16)) for _ in range(3)]
                actor = Actor(scope="org:acme", sub="auth0|doc")
                old = [
                    Event("patient.read", "R", patient_id=p, detail={"via": "search"})
                    for p in patients
                ]
                old.append(Event("patient.searched", "E", detail={"filters": [], "returned": 3}))
                old.append(Event("user.signed_in", "E"))
                async with conn.transaction():
                    await record_events(conn, actor, old)
                upto_0008 = [m for m in discover_migrations() if m.version < "0009"]
                assert await migrate(owner_url, upto_0008) == ["0008_audit_one_event_per_request"]
                pid = patients[0]
                links = await conn.fetch(
                    "SELECT l.patient_ids, l.seq, e.action FROM audit_event_patients l"
                    " JOIN audit_events e USING (seq, recorded_at) ORDER BY l.seq"
                )
                assert [(r["patient_ids"], r["action"]) for r in links] == [
                    ([p], "patient.read") for p in patients
                ]
                now = datetime.now(UTC)
                report = await verify_chain(
                    conn, "org:acme", now - timedelta(hours=1), now + timedelta(hours=1)
                )
                assert (report.status, report.count) == ("intact", 5)
                # And the new append path links as it writes.
                async with conn.transaction():
                    await record_events(
                        conn,
                        actor,
                        [Event("patient.searched", "E", detail={"patient_ids": [str(pid)]})],
                    )
                assert (
                    await conn.fetchval(
                        "SELECT count(*) FROM audit_event_patients"
                        " WHERE patient_ids @> ARRAY[$1::uuid]",
                        pid,
                    )
                    == 2
                )
            finally:
                await conn.close()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


@pytest.mark.parametrize("kind", ["UPDATE", "DELETE"])
async def test_the_links_are_append_only(
    database: ProvisionedDatabase, owner: asyncpg.Connection, kind: str
) -> None:
    actor = Actor(scope=SCOPE, sub=USER)
    pid = asyncpg.pgproto.pgproto.UUID(secrets.token_bytes(16))
    async with owner.transaction():
        await record_events(owner, actor, [Event("patient.read", "R", patient_id=pid)])
    statement = {
        "UPDATE": "UPDATE audit_event_patients SET patient_ids = patient_ids || patient_ids",
        "DELETE": "DELETE FROM audit_event_patients",
    }[kind]
    app = await asyncpg.connect(asyncpg_dsn(database.app_url))
    try:
        for conn in (app, owner):
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute(statement)
    finally:
        await app.close()
    assert await owner.fetchval("SELECT count(*) FROM audit_event_patients") == 1
    await asyncio.sleep(0)
