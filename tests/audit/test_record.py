"""Appending audit events (app/audit/record.py) and recording a request's refusals and
failures (app/audit/edge.py): one unbroken chain per scope under concurrent writers,
append-only storage, and records that commit on their own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import asyncpg
import orjson
import pytest
from databases import Database
from starlette.requests import Request

from app.audit.edge import actor_from, record_denial, record_failure
from app.audit.events import Actor, Event, scope_of
from app.audit.record import record_event, record_independently
from app.auth.tokens import Principal
from app.core.db import create_database, transaction
from app.core.errors import InsufficientScope, UpstreamUnavailable
from app.core.state import Core
from devkit.db import ProvisionedDatabase
from tests.audit.support import ACTOR, abandoned, chain, record, verify


@pytest.fixture
async def app_db(database: ProvisionedDatabase) -> AsyncIterator[Database]:
    """The application's own pool type, for `record_independently` and friends."""
    db = create_database(database.app_url, min_size=1, max_size=5)
    await db.connect()
    yield db
    await db.disconnect()


class TestRecordEvents:
    async def test_first_event_starts_the_chain_and_the_next_links_to_it(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        await record(app_pool, ACTOR, Event("user.registered", "C"))
        await record(app_pool, ACTOR, Event("user.signed_in", "E"))
        first, second = await chain(owner, ACTOR.scope)
        assert first["prev_hash"] is None
        assert second["prev_hash"] == first["hash"]
        assert second["seq"] > first["seq"]
        assert (first["actor"], first["client_id"], first["session_id"], first["token_id"]) == (
            "auth0|alice",
            "spa",
            "sid-1",
            "jti-1",
        )
        assert str(first["source_ip"]) == "203.0.113.9"
        head = await owner.fetchrow("SELECT * FROM audit_chain_heads WHERE scope = $1", ACTOR.scope)
        assert (head["last_seq"], head["last_hash"]) == (second["seq"], second["hash"])

    async def test_a_batch_chains_in_order_in_one_recording(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        patients = [uuid.uuid4() for _ in range(5)]
        await record(app_pool, ACTOR, *(Event("patient.read", "R", patient_id=p) for p in patients))
        rows = await chain(owner, ACTOR.scope)
        assert [r["patient_id"] for r in rows] == patients
        assert [r["prev_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]
        assert len({r["recorded_at"] for r in rows}) == 1
        assert (await verify(app_pool, ACTOR.scope)).count == 5

    async def test_a_rolled_back_record_leaves_no_trace_and_no_fork(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        await record(app_pool, ACTOR, Event("user.registered", "C"))
        with pytest.raises(RuntimeError):
            await abandoned(app_pool, ACTOR, Event("patient.created", "C"))
        await record(app_pool, ACTOR, Event("user.signed_in", "E"))
        assert [r["action"] for r in await chain(owner, ACTOR.scope)] == [
            "user.registered",
            "user.signed_in",
        ]
        assert (await verify(app_pool, ACTOR.scope)).status == "intact"

    @pytest.mark.parametrize(
        "event",
        [
            Event("Patient.Read", "R"),
            Event("patient", "R"),
            Event("patient.read", "X"),  # type: ignore[arg-type]
            Event("patient.read", "R", outcome="maybe"),  # type: ignore[arg-type]
            Event("patient.read", "R", detail={"blob": "x" * 17_000}),
            Event("patient.read", "R", occurred_at=datetime(2024, 1, 1)),
        ],
    )
    async def test_invalid_events_are_refused_before_anything_is_written(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection, event: Event
    ) -> None:
        with pytest.raises(ValueError, match="audit"):
            await record(app_pool, ACTOR, Event("user.signed_in", "E"), event)
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0
        assert await owner.fetchval("SELECT count(*) FROM audit_chain_heads") == 0

    async def test_awkward_request_values_are_stored_safely(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        actor = Actor(scope="user:bob", sub="bob\x00", source_ip="not-an-ip", user_agent="u" * 900)
        await record(app_pool, actor, Event("user.signed_in", "E", reason="r" * 600))
        (row,) = await chain(owner, "user:bob")
        assert row["actor"] == "bob" and row["source_ip"] is None
        assert len(row["user_agent"]) == 512 and len(row["outcome_reason"]) == 500
        assert (await verify(app_pool, "user:bob")).status == "intact"

    def test_scope_and_actor_of_a_principal(self) -> None:
        org = Principal(sub="auth0|a", org_id="org_1", client_id="c", sid="s", jti="j")
        assert scope_of(org) == "org:org_1"
        assert scope_of(Principal(sub="auth0|b")) == "user:auth0|b"
        request = fake_request(None, headers=[(b"user-agent", b"ua/1")])
        actor = actor_from(request, org)
        assert actor == Actor("org:org_1", "auth0|a", "c", "s", "j", "10.1.2.3", "ua/1", "req-9")


class TestConcurrentWriters:
    async def test_many_writers_in_one_scope_keep_one_unbroken_chain(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        async def write(i: int) -> None:
            await record(
                app_pool, ACTOR, *[Event("patient.read", "R", detail={"i": i})] * (1 + i % 3)
            )

        await asyncio.gather(*(write(i) for i in range(60)))
        rows = await chain(owner, ACTOR.scope)
        assert len(rows) == sum(1 + i % 3 for i in range(60))
        assert [r["prev_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]
        report = await verify(app_pool, ACTOR.scope)
        assert (report.status, report.count) == ("intact", len(rows))

    async def test_writers_across_scopes_keep_every_chain_unbroken(
        self, app_pool: asyncpg.Pool
    ) -> None:
        scopes = [f"org:o{i}" for i in range(8)]
        await asyncio.gather(
            *(
                record(app_pool, Actor(scope=s, sub=f"auth0|{n}"), Event("patient.read", "R"))
                for n in range(12)
                for s in scopes
            )
        )
        for scope in scopes:
            report = await verify(app_pool, scope)
            assert (report.status, report.count) == ("intact", 12)

    async def test_a_scope_waits_only_for_its_own_writers(self, app_pool: asyncpg.Pool) -> None:
        async with app_pool.acquire() as holder, holder.transaction():
            await record_event(holder, ACTOR, Event("patient.created", "C"))
            # Another scope is not held up by the open transaction...
            other = Actor(scope="org:other")
            await asyncio.wait_for(record(app_pool, other, Event("patient.read", "R")), 2)
            # ...the same scope waits for it, then continues the chain after it.
            same = asyncio.create_task(record(app_pool, ACTOR, Event("patient.read", "R")))
            await asyncio.sleep(0.2)
            assert not same.done()
        await asyncio.wait_for(same, 2)
        assert (await verify(app_pool, ACTOR.scope)).count == 2


class TestAppendOnly:
    async def test_app_role_cannot_change_any_partition_or_the_triggers(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        await record(app_pool, ACTOR, Event("user.registered", "C"))
        partitions = [
            r["p"]
            for r in await owner.fetch(
                "SELECT inhrelid::regclass::text AS p FROM pg_inherits "
                "WHERE inhparent = 'audit_events'::regclass"
            )
        ]
        statements = [
            "ALTER TABLE audit_events DISABLE TRIGGER USER",
            "DELETE FROM audit_chain_heads",
            "SELECT audit_events_protect_partition('audit_events_default')",
            *(f"UPDATE {p} SET actor = 'x'" for p in partitions),
            *(f"DELETE FROM {p}" for p in partitions),
            *(f"TRUNCATE {p}" for p in partitions),
        ]
        async with app_pool.acquire() as conn:
            for statement in statements:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 1
        assert (await verify(app_pool, ACTOR.scope)).status == "intact"


def fake_request(
    database: Database | None,
    *,
    method: str = "GET",
    path: str = "/api/x",
    headers: list[tuple[bytes, bytes]] | None = None,
    path_params: dict[str, Any] | None = None,
) -> Request:
    return Request(
        {
            "type": "http",
            "method": method,
            "path": path,
            "headers": headers or [],
            "query_string": b"",
            "client": ("10.1.2.3", 5555),
            "path_params": path_params or {},
            "route": SimpleNamespace(path=path),
            # The slice of the lifespan's state that recording reads: the database.
            "state": {"core": Core(None, database, None), "request_id": "req-9"},  # type: ignore[arg-type]
        }
    )


class TestIndependentRecords:
    async def test_a_failure_is_recorded_although_the_request_rolled_back(
        self, app_db: Database, owner: asyncpg.Connection
    ) -> None:
        who = Principal(sub="auth0|carol")
        request = fake_request(app_db, method="PATCH", path="/api/profile")
        event = Event("profile.updated", "U", detail={"fields": ["nickname"]})

        async def update_profile() -> None:
            async with transaction(app_db) as conn:
                await conn.execute("INSERT INTO registrations (auth0_user_id) VALUES ($1)", who.sub)
                await record_event(conn, actor_from(request, who), event)
                raise UpstreamUnavailable("Auth0 is unavailable")

        try:
            await update_profile()
        except UpstreamUnavailable as error:  # what a handler does on its way out
            await record_failure(request, who, event, error)
        assert await owner.fetchval("SELECT count(*) FROM registrations") == 0
        (row,) = await owner.fetch("SELECT *, detail::text AS d FROM audit_events")
        assert (row["action"], row["outcome"], row["outcome_reason"]) == (
            "profile.updated",
            "failed",
            "Auth0 is unavailable",
        )
        assert row["request_id"] == "req-9" and row["actor"] == "auth0|carol"
        assert orjson.loads(row["d"]) == {
            "fields": ["nickname"],
            "status": 503,
            "problem": "unavailable",
        }

    async def test_recording_a_failure_never_raises(
        self, app_db: Database, caplog: pytest.LogCaptureFixture
    ) -> None:
        request = fake_request(None)  # no database: the record cannot be written
        await record_failure(request, None, Event("profile.updated", "U"), UpstreamUnavailable())
        assert "recording a failed request failed" in caplog.text

    async def test_a_denial_is_recorded_with_the_route_and_patient(
        self, app_db: Database, owner: asyncpg.Connection
    ) -> None:
        patient = uuid.uuid4()
        request = fake_request(app_db, path="/api/patients/{id:uuid}", path_params={"id": patient})
        who = Principal(sub="auth0|dave", org_id="acme")
        await record_denial(request, who, InsufficientScope("read:patients"))
        row = await owner.fetchrow("SELECT * FROM audit_events")
        assert (row["scope"], row["action"], row["crud"], row["outcome"]) == (
            "org:acme",
            "access.denied",
            "R",
            "denied",
        )
        assert (row["entity_type"], row["entity_id"], row["patient_id"]) == (
            "route",
            "/api/patients/{id:uuid}",
            patient,
        )

    async def test_anonymous_denials_are_not_recorded(
        self, app_db: Database, owner: asyncpg.Connection
    ) -> None:
        await record_denial(fake_request(app_db), None, InsufficientScope("x"))
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0

    async def test_record_independently_commits_on_its_own(
        self, app_db: Database, owner: asyncpg.Connection
    ) -> None:
        await record_independently(app_db, ACTOR, Event("user.signed_in", "E"))
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 1
