"""The audit writer's group commit (app/audit/batcher.py), against a real database as the
application role: batched requests keep their chains, a bad request fails alone, an outage
fails everyone waiting and recovers, and nothing deadlocks with in-transaction writers."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from databases import Database

from app.audit.batcher import AuditWriter
from app.audit.chain import content_digest
from app.audit.events import Actor, Event, prepare
from app.audit.record import record_events
from app.audit.verify import verify_chain
from app.core.db import asyncpg_dsn, transaction
from app.core.errors import DatabaseUnavailable
from devkit.db import ProvisionedDatabase

SCOPES = [f"org:writer-{n}" for n in range(5)]
SINCE = datetime.now(UTC) - timedelta(days=1)
UNTIL = datetime.now(UTC) + timedelta(days=1)


def actor(n: int, scope: str | None = None) -> Actor:
    return Actor(
        scope=scope or SCOPES[n % len(SCOPES)],
        sub=f"auth0|user-{n}",
        source_ip="10.0.0.7",
        user_agent="pytest",
        request_id=f"req-{n}",
    )


def reads(n: int, count: int = 3) -> list[Event]:
    return [
        Event(
            "patient.read",
            "R",
            entity_type="Patient",
            patient_id=uuid.uuid4(),
            detail={"via": "search", "n": n, "i": i},
        )
        for i in range(count)
    ]


async def chains_intact(owner: asyncpg.Connection) -> dict[str, int]:
    counts = {}
    for scope in await owner.fetch("SELECT DISTINCT scope FROM audit_events"):
        report = await verify_chain(owner, scope["scope"], SINCE, UNTIL)
        assert report.status == "intact", (scope["scope"], report)
        counts[scope["scope"]] = report.count
    return counts


class TestBatching:
    async def test_concurrent_requests_share_statements_and_keep_order(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        writer = AuditWriter(pool)
        await asyncio.gather(*(writer.record(actor(n), reads(n)) for n in range(40)))
        assert writer.requests == 40
        assert writer.batches < 40  # requests waiting together went in one statement
        rows = await owner.fetch(
            "SELECT scope, actor, request_id, host(source_ip) AS ip, detail FROM audit_events"
            " ORDER BY seq"
        )
        assert len(rows) == 120
        for row in rows:  # each event carries its own request's actor, not a neighbour's
            n = int(row["request_id"].removeprefix("req-"))
            assert (row["scope"], row["actor"], row["ip"]) == (
                SCOPES[n % 5],
                f"auth0|user-{n}",
                "10.0.0.7",
            )
        for n in range(40):  # a request's events in its order
            mine = [r["detail"] for r in rows if r["request_id"] == f"req-{n}"]
            assert [int(d.split('"i": ')[1][0]) for d in mine] == [0, 1, 2]
        assert await chains_intact(owner) == {scope: 24 for scope in SCOPES}

    async def test_one_request_alone_is_written_at_once(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        writer = AuditWriter(pool)
        await writer.record(actor(1), reads(1, 1))
        assert (writer.batches, writer.requests) == (1, 1)
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 1

    async def test_no_events_writes_nothing(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        writer = AuditWriter(pool)
        await writer.record(actor(1), [])
        assert writer.batches == 0
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0

    async def test_batches_respect_their_size_bound(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        writer = AuditWriter(pool, max_events=7, max_in_flight=1)
        await asyncio.gather(*(writer.record(actor(n), reads(n)) for n in range(10)))
        assert writer.batches >= 5  # at most two requests of 3 events fit in 7
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 30
        await chains_intact(owner)


class TestFailures:
    async def test_a_bad_request_fails_alone(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        writer = AuditWriter(pool, max_in_flight=1)
        # Valid JSON that jsonb refuses (a NUL character): only the database finds it out.
        bad = [Event("patient.read", "R", detail={"via": "a\x00b"})]
        results = await asyncio.gather(
            *(writer.record(actor(n), reads(n)) for n in range(6)),
            writer.record(actor(99), bad),
            *(writer.record(actor(n), reads(n)) for n in range(6, 12)),
            return_exceptions=True,
        )
        assert isinstance(results[6], asyncpg.DataError)
        assert [r for i, r in enumerate(results) if i != 6] == [None] * 12
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 36
        assert (
            await owner.fetchval("SELECT count(*) FROM audit_events WHERE request_id = 'req-99'")
            == 0
        )
        await chains_intact(owner)

    async def test_an_invalid_event_is_refused_before_anything_is_sent(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        writer = AuditWriter(pool)
        with pytest.raises(ValueError, match="action"):
            await writer.record(actor(1), [Event("Patient Read", "R")])
        assert writer.batches == 0
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0

    async def test_an_outage_fails_every_waiter_then_recovers(
        self, pool: Database, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        writer = AuditWriter(pool)
        await writer.record(actor(0), reads(0))  # the pool holds a live connection now
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
                *(writer.record(actor(n), reads(n)) for n in range(1, 9)),
                return_exceptions=True,
            )
            assert all(isinstance(r, DatabaseUnavailable) for r in results), results
            # Each waiter gets an error of its own: they are raised in separate tasks.
            assert len({id(r) for r in results}) == 8
        finally:
            await admin.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS true')
            await admin.close()
        await writer.record(actor(9), reads(9))  # no restart: the pool reconnects
        stored = await owner.fetch("SELECT DISTINCT request_id FROM audit_events")
        assert {r["request_id"] for r in stored} == {"req-0", "req-9"}
        await chains_intact(owner)

    async def test_a_cancelled_request_is_still_recorded(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        writer = AuditWriter(pool, max_in_flight=1)
        first = asyncio.create_task(writer.record(actor(0), reads(0)))
        await asyncio.sleep(0)  # the first statement is on its way: the next ones queue
        waiting = [asyncio.create_task(writer.record(actor(n), reads(n))) for n in (1, 2)]
        await asyncio.sleep(0)
        waiting[0].cancel()  # the client of request 1 went away
        await first
        await writer.aclose()
        assert waiting[1].done() and waiting[1].exception() is None
        assert await owner.fetchval("SELECT count(DISTINCT request_id) FROM audit_events") == 3


class TestConcurrency:
    async def test_batches_and_transactions_in_the_same_scopes_never_deadlock(
        self, pool: Database, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        writer = AuditWriter(pool, max_in_flight=2)
        direct = await asyncpg.create_pool(asyncpg_dsn(database.app_url), min_size=2, max_size=4)

        async def in_transaction(n: int) -> None:
            async with direct.acquire() as conn, conn.transaction():
                await record_events(conn, actor(n, SCOPES[n % 2]), reads(n, 2))

        async def batched(n: int) -> None:
            # Scopes in both orders across requests: the function locks them in one order.
            await writer.record(actor(n, SCOPES[(n * 7) % 5]), reads(n, 2))

        try:
            await asyncio.wait_for(
                asyncio.gather(
                    *(in_transaction(n) for n in range(30)), *(batched(n) for n in range(30, 90))
                ),
                timeout=60,
            )
        finally:
            await direct.close()
        counts = await chains_intact(owner)
        assert sum(counts.values()) == 180

    async def test_a_batch_waits_for_an_open_transaction_in_its_scope(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        writer = AuditWriter(pool)
        async with transaction(pool) as conn:  # holds scope 0's chain lock, uncommitted
            await record_events(conn, actor(0, SCOPES[0]), reads(0, 1))
            pending = asyncio.create_task(writer.record(actor(1, SCOPES[0]), reads(1, 1)))
            await asyncio.sleep(0.2)
            assert not pending.done()  # the batch queues behind the open transaction
            assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0
        await pending
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 2
        await chains_intact(owner)


class TestEncoding:
    def test_prepared_digests_are_the_verifiers(self) -> None:
        """The writer's shortcut encodes exactly what `content_digest` (the verifier's) does,
        whatever is shared or missing between a request's events."""
        rng = random.Random(7)
        shared = {"via": "search"}
        for trial in range(200):
            who = Actor(
                scope=rng.choice(["org:a", "user:auth0|ü", "anonymous"]),
                sub=rng.choice([None, "auth0|1", "google-oauth2|ñ"]),
                client_id=rng.choice([None, "client"]),
                session_id=rng.choice([None, "sid"]),
                token_id=rng.choice([None, "jti"]),
                source_ip=rng.choice([None, "10.1.2.3", "2001:db8::1", "not an ip"]),
                user_agent=rng.choice([None, "", "ua/1.0 ✓"]),
                request_id=rng.choice([None, f"req-{trial}"]),
            )
            events = [
                Event(
                    rng.choice(["patient.read", "patient.searched", "access.denied"]),
                    rng.choice(["R", "E"]),
                    outcome=rng.choice(["success", "denied"]),
                    reason=rng.choice([None, "why"]),
                    entity_type=rng.choice([None, "Patient"]),
                    entity_id=rng.choice([None, "", "id-ü"]),
                    patient_id=rng.choice([None, uuid.uuid4()]),
                    detail=rng.choice([shared, {"n": rng.randint(0, 3)}, {}]),
                    occurred_at=rng.choice([None, datetime(2026, 1, 1, tzinfo=UTC)]),
                )
                for _ in range(rng.randint(1, 6))
            ]
            prepared = prepare(who, events)
            for row in prepared.rows:
                full = prepared.common | row | {"detail": row["detail"].encode()}
                assert row["content"] == content_digest(full)
                assert row["id"].version == 4 and len({r["id"] for r in prepared.rows}) == len(
                    prepared.rows
                )
