"""The audit log's defences against the service's own database login and against a
superuser (migrations/0009_audit_integrity.sql): only the append functions
write, the verifier refuses a backdated event, and an existing log upgrades intact."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from app.audit.batcher import record_many
from app.audit.chain import canonical_detail, content_digest, link_hash
from app.audit.events import Actor, Event
from app.audit.verify import verify_chain
from app.core.db import asyncpg_dsn, discover_migrations, migrate
from devkit.db import ProvisionedDatabase, with_credentials
from tests.audit.support import ACME, ACTOR, chain, recent, record, seed, verify, window
from tests.audit.tamper import forge_backdated, issue

APPEND_FUNCTIONS = (
    "audit_events_append",
    "audit_events_append_one",
    "audit_events_append_batch",
    "audit_digests_append",
)
# Each audit table and a column to name in an UPDATE.
AUDIT_TABLES = {
    "audit_events": "actor",
    "audit_chain_heads": "last_seq",
    "audit_event_patients": "seq",
    "audit_digests": "kid",
    "audit_signing_keys": "kid",
}


async def _partitions(owner: asyncpg.Connection) -> list[str]:
    return [
        r["p"]
        for r in await owner.fetch(
            "SELECT inhrelid::regclass::text AS p FROM pg_inherits "
            "WHERE inhparent = 'audit_events'::regclass"
        )
    ]


async def _everything(owner: asyncpg.Connection, tables: Iterable[str] = AUDIT_TABLES) -> list[str]:
    """Every row of the audit tables, as text: what must not change."""
    rows = []
    for table in tables:
        rows += [r["t"] for r in await owner.fetch(f"SELECT t::text AS t FROM {table} t")]
    return sorted(rows)


class TestOnlyTheAppendFunctionsWrite:
    async def test_app_role_may_not_insert_update_delete_or_truncate_any_audit_table(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        patient = uuid.uuid4()
        await record(app_pool, ACTOR, Event("patient.read", "R", patient_id=patient))
        await issue(database)
        before = await _everything(owner)
        targets = {**AUDIT_TABLES, **dict.fromkeys(await _partitions(owner), "actor")}
        statements = ["SELECT nextval('audit_events_seq')", "SELECT setval('audit_events_seq', 1)"]
        for table, column in targets.items():
            statements += [
                f"INSERT INTO {table} DEFAULT VALUES",
                f"UPDATE {table} SET {column} = {column}",
                f"DELETE FROM {table}",
                f"TRUNCATE {table}",
                f"ALTER TABLE {table} DISABLE TRIGGER USER",
            ]
        async with app_pool.acquire() as conn:
            for statement in statements:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
        assert await _everything(owner) == before
        assert (await verify(app_pool, ACTOR.scope)).status == "intact"

    async def test_the_forgery_of_issue_16_is_refused(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        """Take the scope's lock, INSERT a backdated `patient.deleted` hashed as the service
        would, move the head: every write is refused, so `verify` cannot be fooled."""
        await record(app_pool, ACTOR, Event("patient.read", "R"))
        log = ("audit_events", "audit_chain_heads", "audit_event_patients")
        before = await _everything(owner, log)
        head = await owner.fetchrow("SELECT * FROM audit_chain_heads WHERE scope = $1", ACME)
        recorded = datetime.now(UTC) - timedelta(days=10)
        row = {
            "id": uuid.uuid4(),
            "occurred_at": recorded,
            "scope": ACME,
            "actor": "auth0|mallory",
            **dict.fromkeys(("client_id", "session_id", "token_id", "source_ip", "user_agent")),
            "action": "patient.deleted",
            "crud": "D",
            "outcome": "success",
            **dict.fromkeys(("outcome_reason", "entity_type", "entity_id", "patient_id")),
            "request_id": None,
            "detail": canonical_detail({}),
        }
        seq = head["last_seq"] + 1000
        forged = link_hash(seq, recorded, content_digest(row), head["last_hash"])
        async with app_pool.acquire() as conn:
            for statement, args in [
                (
                    "INSERT INTO audit_events (seq, id, occurred_at, recorded_at, scope, actor,"
                    " action, crud, outcome, prev_hash, hash)"
                    " VALUES ($1, $2, $3, $3, $4, 'auth0|mallory', 'patient.deleted', 'D',"
                    " 'success', $5, $6)",
                    (seq, row["id"], recorded, ACME, head["last_hash"], forged),
                ),
                (
                    "UPDATE audit_chain_heads SET last_seq = $2, last_hash = $3 WHERE scope = $1",
                    (ACME, seq, forged),
                ),
            ]:
                async with conn.transaction():
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(x'41554448'::integer, hashtext($1))", ACME
                    )
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(statement, *args)
        assert await _everything(owner, log) == before
        assert (await verify(app_pool, ACME)).count == 1

    async def test_append_functions_run_as_their_owner_with_a_pinned_search_path(
        self, owner: asyncpg.Connection
    ) -> None:
        rows = await owner.fetch(
            "SELECT p.proname, p.prosecdef, p.proconfig, pg_get_userbyid(p.proowner) AS owner,"
            " has_function_privilege('bff_app', p.oid, 'EXECUTE') AS app_may,"
            " EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS public_may"
            " FROM pg_proc p WHERE p.proname = ANY($1::text[])",
            list(APPEND_FUNCTIONS),
        )
        migrations_owner = await owner.fetchval("SELECT current_user")
        assert sorted(r["proname"] for r in rows) == sorted(APPEND_FUNCTIONS)
        for row in rows:
            assert row["prosecdef"], row["proname"]
            assert row["proconfig"] == ["search_path=pg_catalog, public, pg_temp"]
            assert row["owner"] == migrations_owner
            assert (row["app_may"], row["public_may"]) == (True, False), row["proname"]

    async def test_a_temporary_table_of_the_caller_cannot_stand_in_for_the_heads(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        """With the caller's search_path (pg_temp first) the append would read and move a
        head of the caller's making, and fork the chain."""
        await record(app_pool, ACTOR, Event("user.signed_in", "E"))
        async with app_pool.acquire() as conn:
            await conn.execute(
                "CREATE TEMPORARY TABLE audit_chain_heads (scope text PRIMARY KEY,"
                " last_seq bigint, last_hash bytea, updated_at timestamptz)"
            )
            async with conn.transaction():
                await record_many(conn, [(ACTOR, [Event("patient.read", "R")])])
            await conn.execute("SELECT audit_events_append_one($1, NULL, NULL, NULL, NULL,"
                               " NULL, NULL, NULL, gen_random_uuid(), now(), 'patient.read',"
                               " 'R', 'success', NULL, NULL, NULL, NULL, '{}', '\\x00')",
                               ACTOR.scope)  # fmt: skip
            assert await conn.fetchval("SELECT count(*) FROM pg_temp.audit_chain_heads") == 0
            await conn.execute("DROP TABLE pg_temp.audit_chain_heads")
        first, second, third = await chain(owner, ACTOR.scope)
        assert (second["prev_hash"], third["prev_hash"]) == (first["hash"], second["hash"])
        head = await owner.fetchrow("SELECT * FROM audit_chain_heads WHERE scope = $1", ACME)
        assert (head["last_seq"], head["last_hash"]) == (third["seq"], third["hash"])

    async def test_recorded_at_never_goes_before_the_scopes_last_recording(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        """The function sets recorded_at (occurred_at is the caller's claim), and after a
        clock step back it records at the scope's last recording, not before."""
        await record(app_pool, ACTOR, Event("user.signed_in", "E"))
        ahead = await owner.fetchval(
            "UPDATE audit_chain_heads SET updated_at = clock_timestamp() + interval '1 minute'"
            " WHERE scope = $1 RETURNING updated_at",
            ACME,
        )
        claimed = datetime.now(UTC) - timedelta(days=10)
        await record(app_pool, ACTOR, Event("patient.read", "R", occurred_at=claimed))
        last = (await chain(owner, ACME))[-1]
        assert last["occurred_at"] == claimed
        assert last["recorded_at"] == ahead


class TestTheVerifierChecksOrder:
    async def test_a_backdated_event_is_broken_at_its_seq(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        for _ in range(3):
            await record(app_pool, ACTOR, Event("patient.read", "R"))
        assert (await verify(app_pool, ACME)).status == "intact"
        forged = await forge_backdated(owner, ACME, days=10)
        now = datetime.now(UTC)
        windows = {
            "the whole log": (now - timedelta(days=20), now + timedelta(days=1)),
            "the forged event outside it": recent(),
            "the forged event alone": (now - timedelta(days=11), now - timedelta(days=9)),
        }
        for name, (since, until) in windows.items():
            async with app_pool.acquire() as conn:
                report = await verify_chain(conn, ACME, since, until)
            assert (report.status, report.broken_seq) == ("broken", forged), name
            assert "backdated" in (report.reason or ""), name

    async def test_events_recorded_in_one_batch_share_a_time_and_stay_intact(
        self, app_pool: asyncpg.Pool
    ) -> None:
        await record(app_pool, ACTOR, *(Event("patient.read", "R") for _ in range(5)))
        report = await verify(app_pool, ACME)
        assert (report.status, report.count) == ("intact", 5)

    async def test_the_verify_endpoint_names_the_backdated_seq(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        for _ in range(3):
            await seed(writer, ACME, Event("patient.read", "R"))
        forged = await forge_backdated(owner, ACME, days=10)
        since = (datetime.now(UTC) - timedelta(days=20)).isoformat()
        response = await client.get(
            "/api/audit-events/verify", params=window(since=since), headers=acme
        )
        body = response.json()
        assert (body["status"], body["broken_seq"], body["count"]) == ("broken", forged, 3)


@pytest.fixture
async def at_0008(template_db: ProvisionedDatabase) -> AsyncIterator[ProvisionedDatabase]:
    """A database migrated up to 0008 only, with an application login."""
    name = f"{template_db.name}_upgrade_{secrets.token_hex(3)}"
    app_role, password = f"{name}_app", secrets.token_urlsafe(12)
    admin = await asyncpg.connect(asyncpg_dsn(template_db.admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    owner_url = with_credentials(template_db.admin_url, database=name)
    try:
        await migrate(owner_url, [m for m in discover_migrations() if m.version < "0009"])
        owner = await asyncpg.connect(asyncpg_dsn(owner_url))
        await owner.execute(
            f"CREATE ROLE \"{app_role}\" LOGIN PASSWORD '{password}' IN ROLE bff_app"
        )
        await owner.execute(f'GRANT CONNECT ON DATABASE "{name}" TO "{app_role}"')
        await owner.close()
        app_url = with_credentials(owner_url, user=app_role, password=password)
        yield ProvisionedDatabase(template_db.admin_url, name, owner_url, app_url, app_role)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{app_role}"')
        await admin.close()


class TestUpgrade:
    async def test_0009_upgrades_a_log_without_losing_an_event(
        self, at_0008: ProvisionedDatabase
    ) -> None:
        owner = await asyncpg.connect(asyncpg_dsn(at_0008.owner_url))
        app = await asyncpg.create_pool(asyncpg_dsn(at_0008.app_url), min_size=1, max_size=2)
        try:
            patients = [uuid.uuid4() for _ in range(3)]
            globex = Actor("org:globex", "auth0|bob")
            await record(app, ACTOR, Event("user.registered", "C"))
            await record(app, ACTOR, *(Event("patient.read", "R", patient_id=p) for p in patients))
            async with app.acquire() as conn, conn.transaction():
                await record_many(conn, [(globex, [Event("patient.searched", "R",
                                  detail={"patient_ids": [str(p) for p in patients]})]),
                                  (ACTOR, [Event("user.signed_in", "E")])])  # fmt: skip
            async with app.acquire() as conn:  # before: the application could write itself
                await conn.execute("SELECT nextval('audit_events_seq')")
            before = await owner.fetch("SELECT * FROM audit_events ORDER BY seq")
            links = await owner.fetch("SELECT * FROM audit_event_patients ORDER BY seq")
            heads = await owner.fetch("SELECT * FROM audit_chain_heads ORDER BY scope")
            assert len(before) == 6 and len(links) == 4

            upto_0009 = [m for m in discover_migrations() if m.version < "0010"]
            assert await migrate(at_0008.owner_url, upto_0009) == ["0009_audit_integrity"]

            assert await owner.fetch("SELECT * FROM audit_events ORDER BY seq") == before
            assert await owner.fetch("SELECT * FROM audit_event_patients ORDER BY seq") == links
            assert await owner.fetch("SELECT * FROM audit_chain_heads ORDER BY scope") == heads
            async with app.acquire() as conn:  # everything still readable by the service
                assert await conn.fetchval("SELECT count(*) FROM audit_events") == 6
                assert await conn.fetchval(
                    "SELECT count(*) FROM audit_event_patients WHERE patient_ids @> $1::uuid[]",
                    [patients[0]],
                ) == 2  # fmt: skip
                for statement in (
                    "SELECT nextval('audit_events_seq')",
                    "UPDATE audit_chain_heads SET last_seq = last_seq",
                    "DELETE FROM audit_event_patients",
                ):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(statement)
            # The chains go on from the old heads, and verify whole.
            await record(app, ACTOR, Event("patient.read", "R", patient_id=patients[1]))
            rows = await chain(owner, ACME)
            assert rows[-1]["prev_hash"] == rows[-2]["hash"] == before[-1]["hash"]
            for scope, count in ((ACME, 6), ("org:globex", 1)):
                report = await verify(app, scope)
                assert (report.status, report.count) == ("intact", count), scope
            digest = await issue(at_0008, registered=True)  # 0009 stored keys as they signed
            assert (digest.number, digest.heads) == (1, 2)
        finally:
            await app.close()
            await owner.close()
