"""Units of patient storage, search, cursors, idempotency keys and the patient models,
against a real database as the application role."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from databases import Database
from pydantic import ValidationError

from app.audit.batcher import AuditWriter
from app.audit.events import Actor
from app.core.db import asyncpg_dsn
from app.core.errors import BadRequest, ValidationFailed
from app.http import idempotency
from app.patients.repository import (
    DuplicateIdentifier,
    PatientGone,
    PatientNotFound,
    VersionMismatch,
    create_patient,
    delete_patient,
    fold,
    get_patient,
    patient_json,
    update_patient,
)
from app.patients.schemas import PatientCreate, PatientPatch, PatientSearch
from app.patients.search import (
    PatientFilters,
    decode_cursor,
    encode_cursor,
    list_patients,
    read_page_audited,
)
from devkit.db import ProvisionedDatabase

SCOPE, OTHER = "org:one", "org:two"
KEY = b"k" * 32
ACTOR = Actor(scope=SCOPE, sub="auth0|tester", request_id="req-1")


async def versions(conn: asyncpg.Connection, scope: str, patient_id: Any) -> list[dict[str, Any]]:
    """What `patient_versions` holds for the patient in `scope`, oldest first, as stored."""
    rows = await conn.fetch(
        "SELECT version, data, changed_fields, change, replaced_by, request_id"
        " FROM patient_versions WHERE scope = $1 AND patient_id = $2 ORDER BY version",
        scope,
        patient_id,
    )
    return [{**dict(r), "data": orjson.loads(r["data"])} for r in rows]


def fields(**changes: Any) -> dict[str, Any]:
    data = {
        "given_name": "Ana",
        "family_name": "Lima",
        "birth_date": date(1990, 5, 17),
        "gender": "female",
        "identifier": {"system": "urn:mrn", "value": "1"},
        "phone": None,
        "email": None,
        "address": {"city": "Porto"},
        "active": True,
    }
    return data | changes


@pytest.fixture
async def conn(database: ProvisionedDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the application role (its grants are part of what is tested)."""
    connection = await asyncpg.connect(asyncpg_dsn(database.app_url))
    yield connection
    await connection.close()


async def make(conn: asyncpg.Connection, scope: str = SCOPE, **changes: Any) -> asyncpg.Record:
    async with conn.transaction():
        return await create_patient(conn, scope, "auth0|tester", fields(**changes))


class TestFold:
    @pytest.mark.parametrize(
        ("name", "folded"),
        [
            ("Élodie", "elodie"),
            ("ZOË", "zoe"),
            ("Straße", "strasse"),
            ("Łukasz", "łukasz"),
            ("ﬁona", "fiona"),
            ("李", "李"),
            ("Ångström", "angstrom"),
        ],
    )
    def test_fold(self, name: str, folded: str) -> None:
        assert fold(name) == folded


class TestModels:
    def test_create_normalises(self) -> None:
        model = PatientCreate.model_validate(
            {
                "given_name": "  Ana ",
                "family_name": "Lima",
                "birth_date": "1990-05-17",
                "phone": "+351 (21) 123-4567",
                "email": "Ana@Example.COM",
                "address": {"country": "pt", "line": ["Rua 1"]},
            }
        )
        assert model.given_name == "Ana" and model.phone == "+351211234567"
        assert model.email == "Ana@example.com"
        assert model.fields()["address"] == {"country": "PT", "line": ["Rua 1"]}

    def test_birth_date_today_is_fine_tomorrow_far_ahead_is_not(self) -> None:
        today = datetime.now(UTC).date()
        base = {"given_name": "A", "family_name": "B"}
        PatientCreate.model_validate(base | {"birth_date": today.isoformat()})
        with pytest.raises(ValidationError):
            PatientCreate.model_validate(
                base | {"birth_date": (today + timedelta(days=2)).isoformat()}
            )

    def test_errors_never_quote_the_input(self) -> None:
        with pytest.raises(ValidationError) as caught:
            PatientCreate.model_validate(
                {
                    "given_name": "Secretname\x07",
                    "family_name": "F",
                    "birth_date": "1990-02-30",
                    "email": "secret<>@example..com",
                    "phone": "secret-phone",
                }
            )
        text = str(caught.value.errors(include_input=False, include_url=False))
        assert "ecret" not in text and "1990" not in text

    def test_patch_changes_only_what_was_sent(self) -> None:
        patch = PatientPatch.model_validate({"phone": None, "gender": "other"})
        assert patch.changes() == {"phone": None, "gender": "other"}

    def test_search_identifier_splits_on_the_first_bar(self) -> None:
        query = PatientSearch.model_validate({"identifier": "urn:x|a|b"})
        assert query.identifier_pair() == ("urn:x", "a|b")


class TestStorage:
    async def test_create_and_read(self, conn: asyncpg.Connection) -> None:
        row = await make(conn)
        assert row["version"] == 1
        assert await get_patient(conn, OTHER, row["id"]) is None
        found = await get_patient(conn, SCOPE, row["id"])
        assert found is not None and patient_json(found)["address"] == {"city": "Porto"}

    async def test_duplicate_leaves_the_transaction_usable(self, conn: asyncpg.Connection) -> None:
        first = await make(conn)
        async with conn.transaction():
            with pytest.raises(DuplicateIdentifier) as caught:
                await create_patient(conn, SCOPE, "x", fields())
            assert caught.value.existing_id == first["id"]
            assert await conn.fetchval("SELECT count(*) FROM patients") == 1

    async def test_rows_inserted_by_plain_sql_are_searchable(
        self, conn: asyncpg.Connection, owner: asyncpg.Connection
    ) -> None:
        await owner.execute(
            "INSERT INTO patients (scope, created_by, given_name, family_name, birth_date)"
            " VALUES ($1, 'seed', 'Maria', 'Souza', '1970-01-01')",
            SCOPE,
        )
        rows, _ = await list_patients(conn, SCOPE, limit=5, filters=PatientFilters(name="mar"))
        assert [r["given_name"] for r in rows] == ["Maria"]

    async def test_update_archives_the_old_version(self, conn: asyncpg.Connection) -> None:
        row = await make(conn)
        async with conn.transaction():
            new, changed = await update_patient(
                conn,
                SCOPE,
                row["id"],
                {"given_name": "Anna", "gender": "female"},
                expected_version=1,
                changed_by="auth0|editor",
                request_id="req-9",
            )
        assert changed == ["given_name"] and new["version"] == 2
        [old] = await versions(conn, SCOPE, row["id"])
        assert old["version"] == 1 and old["data"]["given_name"] == "Ana"
        assert old["changed_fields"] == ["given_name"] and old["replaced_by"] == "auth0|editor"
        assert old["request_id"] == "req-9"
        assert await versions(conn, OTHER, row["id"]) == []

    async def test_update_refusals(self, conn: asyncpg.Connection) -> None:
        row = await make(conn)
        for scope, version, error in [(OTHER, 1, PatientNotFound), (SCOPE, 3, VersionMismatch)]:
            with pytest.raises(error):
                async with conn.transaction():
                    await update_patient(
                        conn,
                        scope,
                        row["id"],
                        {"gender": "male"},
                        expected_version=version,
                        changed_by=None,
                    )
        async with conn.transaction():
            await delete_patient(conn, SCOPE, row["id"], expected_version=None, deleted_by=None)
        with pytest.raises(PatientGone):
            async with conn.transaction():
                await update_patient(
                    conn, SCOPE, row["id"], {"gender": "male"}, expected_version=2, changed_by=None
                )
        history = await versions(conn, SCOPE, row["id"])
        assert [h["change"] for h in history] == ["deleted"]

    async def test_concurrent_updates_from_one_version(
        self, database: ProvisionedDatabase, conn: asyncpg.Connection
    ) -> None:
        row = await make(conn)
        others = [await asyncpg.connect(asyncpg_dsn(database.app_url)) for _ in range(4)]

        async def attempt(c: asyncpg.Connection, gender: str) -> str:
            try:
                async with c.transaction():
                    await update_patient(
                        c, SCOPE, row["id"], {"gender": gender}, expected_version=1, changed_by=None
                    )
                    await asyncio.sleep(0.05)  # hold the lock while the others queue
            except VersionMismatch:
                return "stale"
            return "ok"

        try:
            results = await asyncio.gather(
                *(
                    attempt(c, g)
                    for c, g in zip(others, ["male", "other", "unknown", "male"], strict=True)
                )
            )
        finally:
            for c in others:
                await c.close()
        assert sorted(results) == ["ok", "stale", "stale", "stale"]
        assert len(await versions(conn, SCOPE, row["id"])) == 1

    async def test_the_app_role_cannot_rewrite_history(self, conn: asyncpg.Connection) -> None:
        row = await make(conn)
        async with conn.transaction():
            await update_patient(
                conn, SCOPE, row["id"], {"gender": "male"}, expected_version=1, changed_by=None
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE patient_versions SET data = '{}'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM patient_versions")


class TestSearch:
    async def test_name_search_uses_the_folded_index_under_a_generic_plan(
        self, conn: asyncpg.Connection, owner: asyncpg.Connection
    ) -> None:
        await owner.executemany(
            "INSERT INTO patients (scope, created_by, given_name, family_name,"
            " given_name_folded, family_name_folded, birth_date)"
            " VALUES ($1, 'seed', $2, $2, $2, $2, '1980-01-01')",
            [(f"org:{i % 20}", f"name{i}") for i in range(4000)],
        )
        await owner.execute("ANALYZE patients")
        from app.patients.search import _search_sql

        sql, args = _search_sql("org:3", PatientFilters(name="name123"), None, 20)
        # A generic plan (what a pooled prepared statement ends up with) sees only $n.
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE search AS {sql}")
        literals = ", ".join("'" + str(a).replace("'", "''") + "'" for a in args)
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE search({literals})"))
        assert "$2" in plan
        assert "patients_scope_given_folded_idx" in plan
        assert "patients_scope_family_folded_idx" in plan

    async def test_pages_and_cursor_round_trip(self, conn: asyncpg.Connection) -> None:
        ids = [(await make(conn, identifier=None, given_name=f"N{i}"))["id"] for i in range(5)]
        rows, position = await list_patients(conn, SCOPE, limit=2)
        assert [r["id"] for r in rows] == ids[::-1][:2] and position is not None
        cursor = encode_cursor(KEY, SCOPE, PatientFilters(), position)
        assert decode_cursor(KEY, SCOPE, PatientFilters(), cursor) == position
        for scope, filters, key in [
            (OTHER, PatientFilters(), KEY),
            (SCOPE, PatientFilters(name="n"), KEY),
            (SCOPE, PatientFilters(), b"x" * 32),
        ]:
            with pytest.raises(BadRequest):
                decode_cursor(key, scope, filters, cursor)

    async def test_read_page_audited_records_one_event_per_page(
        self, conn: asyncpg.Connection, owner: asyncpg.Connection, pool: Database
    ) -> None:
        ids = {str((await make(conn, identifier=None))["id"]) for _ in range(3)}
        await make(conn, OTHER, identifier=None)
        writer = AuditWriter(pool)
        page = await read_page_audited(pool, writer, ACTOR, SCOPE, cursor_key=KEY, limit=2)
        assert len(page["items"]) == 2 and page["next_cursor"]
        rest = await read_page_audited(
            pool, writer, ACTOR, SCOPE, cursor_key=KEY, limit=2, cursor=page["next_cursor"]
        )
        assert rest["next_cursor"] is None
        assert {p["id"] for p in page["items"] + rest["items"]} == ids
        reads = await owner.fetch(
            "SELECT patient_id, detail::text AS detail FROM audit_events"
            " WHERE action = 'patient.read' ORDER BY seq"
        )
        assert [r["patient_id"] for r in reads] == [None, None]
        shown = [orjson.loads(r["detail"]) for r in reads]
        assert shown == [
            {"via": "profile", "patient_ids": [p["id"] for p in page["items"]]},
            {"via": "profile", "patient_ids": [p["id"] for p in rest["items"]]},
        ]

    async def test_an_empty_profile_page_records_nothing(
        self, owner: asyncpg.Connection, pool: Database
    ) -> None:
        page = await read_page_audited(pool, AuditWriter(pool), ACTOR, SCOPE, cursor_key=KEY)
        assert page == {"items": [], "next_cursor": None}
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0

    async def test_a_failed_audit_write_fails_the_read(
        self, conn: asyncpg.Connection, owner: asyncpg.Connection, pool: Database
    ) -> None:
        await make(conn)
        await owner.execute(  # the append functions are the only way in (migrations/0009)
            "REVOKE EXECUTE ON FUNCTION audit_events_append, audit_events_append_one,"
            " audit_events_append_batch FROM bff_app"
        )
        with pytest.raises(asyncpg.PostgresError):
            await read_page_audited(pool, AuditWriter(pool), ACTOR, SCOPE, cursor_key=KEY)
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0


class TestIdempotencyKeys:
    async def test_claim_complete_replay_and_mismatch(self, conn: asyncpg.Connection) -> None:
        digest = idempotency.fingerprint("op", {"a": 1})
        async with conn.transaction():
            assert await idempotency.claim(conn, "alice", "k1", digest) is None
            await idempotency.complete(
                conn, "alice", "k1", idempotency.StoredResponse(201, {"id": "x"}, {"ETag": "1"})
            )
        async with conn.transaction():
            stored = await idempotency.claim(conn, "alice", "k1", digest)
        assert stored == idempotency.StoredResponse(201, {"id": "x"}, {"ETag": "1"})
        with pytest.raises(ValidationFailed):
            async with conn.transaction():
                await idempotency.claim(conn, "alice", "k1", idempotency.fingerprint("other"))
        async with conn.transaction():
            assert await idempotency.claim(conn, "bob", "k1", digest) is None

    async def test_a_second_claim_waits_for_the_first(
        self, database: ProvisionedDatabase, conn: asyncpg.Connection
    ) -> None:
        digest = idempotency.fingerprint("op")
        other = await asyncpg.connect(asyncpg_dsn(database.app_url))
        try:
            first = conn.transaction()
            await first.start()
            assert await idempotency.claim(conn, "alice", "k", digest) is None

            async def second() -> idempotency.StoredResponse | None:
                async with other.transaction():
                    return await idempotency.claim(other, "alice", "k", digest)

            waiting = asyncio.create_task(second())
            await asyncio.sleep(0.1)
            assert not waiting.done()  # blocked on the first claim's row
            await idempotency.complete(conn, "alice", "k", idempotency.StoredResponse(201, {}))
            await first.commit()
            assert (await waiting) == idempotency.StoredResponse(201, {})
        finally:
            await other.close()

    async def test_purge_removes_only_expired_keys(
        self, conn: asyncpg.Connection, owner: asyncpg.Connection
    ) -> None:
        for key in ("old", "new"):
            async with conn.transaction():
                await idempotency.claim(conn, "alice", key, b"d")
                await idempotency.complete(conn, "alice", key, idempotency.StoredResponse(201, {}))
        await owner.execute(
            "UPDATE idempotency_keys SET expires_at = now() - interval '1 h'"
            " WHERE idempotency_key = 'old'"
        )
        assert await idempotency.purge_expired(conn) == 1
        assert await conn.fetchval("SELECT idempotency_key FROM idempotency_keys") == "new"
