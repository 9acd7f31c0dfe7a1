"""The hash chain (app/audit/chain.py) and its verifier (app/audit/verify.py): the stored hash
follows the documented encoding, and every kind of tampering is the first broken link."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from app.audit.chain import CONTENT_COLUMNS, canonical_detail, content_digest, event_hash
from app.audit.events import Actor, Event
from app.audit.verify import verify_chain
from tests.audit.support import ACTOR, chain, recent, record, verify


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


async def tamper(owner: asyncpg.Connection, statement: str, *args: Any) -> None:
    """Change audit rows as the owner, bypassing the append-only triggers for a moment."""
    await owner.execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
    try:
        await owner.execute(statement, *args)
    finally:
        await owner.execute("ALTER TABLE audit_events ENABLE TRIGGER USER")


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
