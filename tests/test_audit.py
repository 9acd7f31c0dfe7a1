"""The audit log at the database level: the chain, concurrency, verification, the watermark."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
import orjson
import pytest
from databases import Database
from starlette.requests import Request

from app.audit.chain import CONTENT_COLUMNS, canonical_detail, content_digest, event_hash
from app.audit.events import Actor, Event, scope_of
from app.audit.http import actor_from, record_denial, record_failure
from app.audit.query import fetch_feed
from app.audit.record import record_event, record_events, record_independently
from app.audit.verify import verify_chain
from app.auth.tokens import Principal
from app.core.db import asyncpg_dsn, create_database, transaction
from app.core.errors import InsufficientScope, UpstreamUnavailable
from app.dev.db import ProvisionedDatabase

ACTOR = Actor(
    scope="org:acme",
    sub="auth0|alice",
    client_id="spa",
    session_id="sid-1",
    token_id="jti-1",
    source_ip="203.0.113.9",
    user_agent="pytest",
    request_id="req-1",
)


def recent() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(days=1), now + timedelta(days=1)


@pytest.fixture
async def app_pool(database: ProvisionedDatabase) -> AsyncIterator[asyncpg.Pool]:
    """Connections as the application role (INSERT and SELECT on the audit log only)."""
    pool = await asyncpg.create_pool(asyncpg_dsn(database.app_url), min_size=2, max_size=30)
    yield pool
    await pool.close()


@pytest.fixture
async def app_db(database: ProvisionedDatabase) -> AsyncIterator[Database]:
    """The application's own pool type, for `record_independently` and friends."""
    db = create_database(database.app_url, min_size=1, max_size=5)
    await db.connect()
    yield db
    await db.disconnect()


async def record(pool: asyncpg.Pool, actor: Actor, *events: Event) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await record_events(conn, actor, events)


async def abandoned(pool: asyncpg.Pool, actor: Actor, event: Event) -> None:
    """Record inside a transaction that then fails and rolls back."""
    async with pool.acquire() as conn, conn.transaction():
        await record_event(conn, actor, event)
        raise RuntimeError("the change failed")


async def verify(pool: asyncpg.Pool, scope: str) -> Any:
    async with pool.acquire() as conn:
        return await verify_chain(conn, scope, *recent())


async def chain(owner: asyncpg.Connection, scope: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await owner.fetch(
        "SELECT *, detail::text AS detail_text FROM audit_events WHERE scope = $1 ORDER BY seq",
        scope,
    )
    return rows


async def tamper(owner: asyncpg.Connection, statement: str, *args: Any) -> None:
    """Change audit rows as the owner, bypassing the append-only triggers for a moment."""
    await owner.execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
    try:
        await owner.execute(statement, *args)
    finally:
        await owner.execute("ALTER TABLE audit_events ENABLE TRIGGER USER")


def spec_hash(row: dict[str, Any]) -> bytes:
    """The chain hash as `app.audit.chain`'s docstrings state it, written out independently."""

    def field(value: bytes | None) -> bytes:
        return b"\x00" if value is None else b"\x01" + len(value).to_bytes(4, "big") + value

    def text(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    def micros(value: datetime) -> bytes:
        delta = value - datetime(1970, 1, 1, tzinfo=UTC)
        total = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        return total.to_bytes(8, "big", signed=True)

    parts = [
        field(row["id"].bytes),
        field(micros(row["occurred_at"])),
        *(field(text(row[n])) for n in ("scope", "actor", "client_id", "session_id", "token_id")),
        field(row["source_ip"].packed if row["source_ip"] is not None else None),
        *(field(text(row[n])) for n in ("user_agent", "action", "crud", "outcome")),
        *(field(text(row[n])) for n in ("outcome_reason", "entity_type", "entity_id")),
        field(row["patient_id"].bytes if row["patient_id"] is not None else None),
        field(text(row["request_id"])),
        field(row["detail"]),
    ]
    content = hashlib.sha256(b"bff-audit-event/v1\x00" + b"".join(parts)).digest()
    link = [
        b"bff-audit-link/v1:",
        row["seq"].to_bytes(8, "big", signed=True),
        micros(row["recorded_at"]),
        content,
        row["prev_hash"] or b"",
    ]
    return hashlib.sha256(b"".join(link)).digest()


class TestCanonicalEncoding:
    async def test_stored_hash_follows_the_documented_encoding(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        patient = uuid.uuid4()
        occurred = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
        await record(
            app_pool,
            ACTOR,
            Event(
                "patient.updated",
                "U",
                entity_type="patient",
                entity_id=str(patient),
                patient_id=patient,
                detail={"fields": ["phone"]},
                occurred_at=occurred,
            ),
            Event("patient.read", "R", reason=None),
        )
        rows = await chain(owner, ACTOR.scope)
        assert len(rows) == 2
        for row in rows:
            values = {**dict(row), "detail": canonical_detail(orjson.loads(row["detail_text"]))}
            assert spec_hash(values) == row["hash"] == event_hash(values)
        assert rows[0]["occurred_at"] == occurred
        assert abs(rows[1]["occurred_at"] - rows[1]["recorded_at"]) < timedelta(seconds=5)

    def test_null_and_empty_and_field_boundaries_differ(self) -> None:
        base: dict[str, Any] = dict.fromkeys(name for name, _ in CONTENT_COLUMNS)
        digests = {
            content_digest(base | {"actor": None}),
            content_digest(base | {"actor": ""}),
            content_digest(base | {"actor": "ab", "client_id": "c"}),
            content_digest(base | {"actor": "a", "client_id": "bc"}),
        }
        assert len(digests) == 4

    def test_detail_is_canonical_as_jsonb_gives_it_back(self) -> None:
        assert (
            canonical_detail({"b": 1, "a": [2.0, 1e16, 0.5]})
            == b'{"a":[2,10000000000000000,0.5],"b":1}'
        )
        with pytest.raises(ValueError, match="finite"):
            canonical_detail({"x": float("nan")})
        with pytest.raises(ValueError, match="64 bits"):
            canonical_detail({"x": 2**64})

    async def test_detail_numbers_survive_jsonb(self, app_pool: asyncpg.Pool) -> None:
        await record(
            app_pool,
            ACTOR,
            Event("user.signed_in", "E", detail={"n": 1e16, "f": 1.5e-7, "u": "é\u2028"}),
        )
        assert (await verify(app_pool, ACTOR.scope)).status == "intact"


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
            Event("patient.read", "R", detail={"blob": "x" * 5000}),
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


class TestVerifyChain:
    async def seed(self, pool: asyncpg.Pool, n: int = 6) -> list[asyncpg.Record]:
        for i in range(n):
            await record(pool, ACTOR, Event("patient.read", "R", detail={"i": i}))
        await record(pool, Actor(scope="org:other"), Event("patient.read", "R"))
        async with pool.acquire() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(
                "SELECT seq, id, hash FROM audit_events WHERE scope = $1 ORDER BY seq", ACTOR.scope
            )
        return rows

    async def test_intact_chain_reports_its_count(self, app_pool: asyncpg.Pool) -> None:
        rows = await self.seed(app_pool)
        report = await verify(app_pool, ACTOR.scope)
        assert (report.status, report.count) == ("intact", 6)
        assert (report.first_seq, report.last_seq) == (rows[0]["seq"], rows[-1]["seq"])

    async def test_empty_window_is_intact_with_no_events(self, app_pool: asyncpg.Pool) -> None:
        await self.seed(app_pool, 1)
        async with app_pool.acquire() as conn:
            past = datetime(2020, 1, 1, tzinfo=UTC)
            report = await verify_chain(conn, ACTOR.scope, past, past + timedelta(days=1))
        assert (report.status, report.count) == ("intact", 0)

    async def test_an_edited_row_is_the_first_broken_event(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        rows = await self.seed(app_pool)
        await tamper(
            owner, "UPDATE audit_events SET actor = 'auth0|mallory' WHERE seq = $1", rows[3]["seq"]
        )
        report = await verify(app_pool, ACTOR.scope)
        assert report.status == "broken"
        assert (report.broken_seq, report.broken_id, report.count) == (
            rows[3]["seq"],
            rows[3]["id"],
            3,
        )
        assert "contents" in (report.reason or "")
        # The other scope's chain is untouched.
        assert (await verify(app_pool, "org:other")).status == "intact"

    async def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        rows = await self.seed(app_pool)
        target = (await chain(owner, ACTOR.scope))[2]
        forged = {
            **dict(target),
            "actor": "auth0|mallory",
            "detail": canonical_detail(orjson.loads(target["detail_text"])),
        }
        await tamper(
            owner,
            "UPDATE audit_events SET actor = $2, hash = $3 WHERE seq = $1",
            target["seq"],
            "auth0|mallory",
            event_hash(forged),
        )
        report = await verify(app_pool, ACTOR.scope)
        assert (report.status, report.broken_seq) == ("broken", rows[3]["seq"])
        assert "prev_hash" in (report.reason or "")

    async def test_a_removed_row_breaks_the_next_link(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        rows = await self.seed(app_pool)
        await tamper(owner, "DELETE FROM audit_events WHERE seq = $1", rows[1]["seq"])
        report = await verify(app_pool, ACTOR.scope)
        assert (report.status, report.broken_seq, report.count) == ("broken", rows[2]["seq"], 1)

    async def test_a_removed_tail_is_found_from_the_chain_head(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        rows = await self.seed(app_pool)
        await tamper(owner, "DELETE FROM audit_events WHERE seq = $1", rows[-1]["seq"])
        report = await verify(app_pool, ACTOR.scope)
        assert (report.status, report.broken_seq, report.count) == ("broken", rows[-1]["seq"], 5)
        assert "removed" in (report.reason or "")

    async def test_a_window_starting_mid_chain_checks_the_link_into_it(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        rows = await self.seed(app_pool)
        stored = await chain(owner, ACTOR.scope)
        since = stored[3]["recorded_at"]
        async with app_pool.acquire() as conn:
            report = await verify_chain(conn, ACTOR.scope, since, recent()[1])
        assert (report.status, report.count, report.first_seq) == ("intact", 3, rows[3]["seq"])
        await tamper(owner, "DELETE FROM audit_events WHERE seq = $1", rows[2]["seq"])
        async with app_pool.acquire() as conn:
            report = await verify_chain(conn, ACTOR.scope, since, recent()[1])
        assert (report.status, report.broken_seq) == ("broken", rows[3]["seq"])


class TestWatermark:
    async def test_an_in_flight_writer_holds_the_feed_back_until_it_commits(
        self, app_pool: asyncpg.Pool
    ) -> None:
        other = Actor(scope="org:other")
        async with app_pool.acquire() as slow, app_pool.acquire() as reader:
            transaction = slow.transaction()
            await transaction.start()
            await record_event(slow, other, Event("patient.created", "C"))
            # A later seq in the reader's scope commits first.
            await record(app_pool, ACTOR, Event("patient.read", "R"))
            rows, next_seq, watermark = await fetch_feed(reader, ACTOR.scope, 0, 100)
            assert rows == [] and next_seq == 0 and watermark == 0
            await transaction.commit()
            rows, next_seq, watermark = await fetch_feed(reader, ACTOR.scope, 0, 100)
            assert [r["action"] for r in rows] == ["patient.read"]
            assert next_seq == watermark == rows[0]["seq"]

    async def test_a_rolled_back_writer_releases_the_watermark(
        self, app_pool: asyncpg.Pool
    ) -> None:
        with pytest.raises(RuntimeError):
            await abandoned(app_pool, Actor(scope="org:other"), Event("patient.read", "R"))
        await record(app_pool, ACTOR, Event("patient.read", "R"))
        async with app_pool.acquire() as reader:
            rows, _, watermark = await fetch_feed(reader, ACTOR.scope, 0, 100)
        assert len(rows) == 1 and watermark == rows[0]["seq"]

    async def test_unrelated_long_transactions_do_not_stall_it(
        self, app_pool: asyncpg.Pool
    ) -> None:
        async with app_pool.acquire() as busy, busy.transaction():
            await busy.execute("INSERT INTO registrations (auth0_user_id) VALUES ('auth0|busy')")
            await record(app_pool, ACTOR, Event("patient.read", "R"))
            async with app_pool.acquire() as reader:
                rows, _, _ = await fetch_feed(reader, ACTOR.scope, 0, 100)
            assert len(rows) == 1

    async def test_writers_in_other_databases_do_not_count(
        self, app_pool: asyncpg.Pool, database: ProvisionedDatabase
    ) -> None:
        elsewhere = await asyncpg.connect(asyncpg_dsn(database.admin_url))
        try:
            async with elsewhere.transaction():
                await elsewhere.execute(
                    "SELECT pg_advisory_xact_lock_shared((x'4155'::bigint << 48) | 1)"
                )
                await record(app_pool, ACTOR, Event("patient.read", "R"))
                async with app_pool.acquire() as reader:
                    rows, _, _ = await fetch_feed(reader, ACTOR.scope, 0, 100)
                assert len(rows) == 1
        finally:
            await elsewhere.close()

    async def test_pullers_lose_nothing_while_writers_commit_out_of_order(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        """Writers in many scopes hold their transactions open for random times, so seq
        numbers commit out of order; a global puller and a per-scope puller, both bounded
        by the watermark, must between them see every committed event exactly once."""
        scopes = [f"org:w{i}" for i in range(6)]
        done = asyncio.Event()
        rng = random.Random(5)

        class Abandoned(Exception):
            pass

        async def writer(n: int) -> None:
            for i in range(15):
                scope = scopes[(n + i) % len(scopes)]
                try:
                    async with app_pool.acquire() as conn, conn.transaction():
                        await record_event(conn, Actor(scope=scope), Event("patient.read", "R"))
                        await asyncio.sleep(rng.random() * 0.02)
                        if rng.random() < 0.1:
                            raise Abandoned  # some transactions roll back, leaving gaps
                except Abandoned:
                    pass

        async def global_puller() -> list[int]:
            seen: list[int] = []
            after = 0
            async with app_pool.acquire() as conn:
                while True:
                    finished = done.is_set()
                    watermark = await conn.fetchval("SELECT audit_events_watermark()")
                    rows = await conn.fetch(
                        "SELECT seq FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq",
                        after,
                        watermark,
                    )
                    seen += [r["seq"] for r in rows]
                    after = max(after, watermark)
                    if finished:
                        return seen
                    await asyncio.sleep(0.003)

        async def scope_puller(scope: str) -> list[int]:
            seen: list[int] = []
            after = 0
            async with app_pool.acquire() as conn:
                while True:
                    finished = done.is_set()
                    rows, after, _ = await fetch_feed(conn, scope, after, 7)
                    seen += [r["seq"] for r in rows]
                    if finished and not rows:
                        return seen
                    await asyncio.sleep(0.002)

        pullers = [
            asyncio.create_task(global_puller()),
            asyncio.create_task(scope_puller(scopes[0])),
        ]
        await asyncio.gather(*(writer(n) for n in range(12)))
        done.set()
        everything, scoped = await asyncio.gather(*pullers)
        committed = [
            r["seq"] for r in await owner.fetch("SELECT seq FROM audit_events ORDER BY seq")
        ]
        assert everything == committed
        in_scope = [
            r["seq"]
            for r in await owner.fetch(
                "SELECT seq FROM audit_events WHERE scope = $1 ORDER BY seq", scopes[0]
            )
        ]
        assert scoped == in_scope


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
            "state": {"ctx": SimpleNamespace(database=database), "request_id": "req-9"},
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
