"""What the integrity tests share: the signing and scope keys, issuing digests as the
service does, and what someone holding the database's keys (a superuser, or the migrations
owner) can do to the log and its digests behind the service's back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from app.audit.anchor import Anchor
from app.audit.chain import canonical_detail, content_digest, event_hash, link_hash
from app.audit.digests import IssuedDigest, issue_digest, register_keys
from app.audit.signing import KeyRing, ScopeNames
from app.core.db import asyncpg_dsn
from devkit.db import ProvisionedDatabase
from devkit.keys import new_audit_scope_key, new_audit_signing_key

AUDIT_KEY = new_audit_signing_key("test-audit-1")
OTHER_KEY = new_audit_signing_key("test-audit-2")
RING = KeyRing.from_setting(AUDIT_KEY)
SEED = AUDIT_KEY.partition(":")[2]
SCOPE_KEY = new_audit_scope_key("test-scope-1")
NAMES = ScopeNames.from_setting(SCOPE_KEY)


async def register(database: ProvisionedDatabase, ring: KeyRing = RING) -> None:
    """Register the ring's keys as the owner, as `python -m app audit register-key` does."""
    conn = await asyncpg.connect(asyncpg_dsn(database.owner_url))
    try:
        await register_keys(conn, ring)
    finally:
        await conn.close()


async def issue(
    database: ProvisionedDatabase,
    ring: KeyRing = RING,
    *,
    names: ScopeNames = NAMES,
    known: Anchor | None = None,
    registered: bool = False,
) -> IssuedDigest:
    """One digest now, as `python -m app audit digest` issues it (the application role),
    once the ring's keys are registered (unless they are already, or need not be)."""
    if not registered:
        await register(database, ring)
    conn = await asyncpg.connect(asyncpg_dsn(database.app_url))
    try:
        issued = (await issue_digest(conn, ring, names, known=known)).issued
    finally:
        await conn.close()
    assert issued is not None
    return issued


async def forge_backdated(
    owner: asyncpg.Connection, scope: str, *, days: float, seq: int | None = None
) -> int:
    """A forgery by a role that may still INSERT: a `patient.deleted` by another actor,
    recorded `days` ago, linked and hashed as the service would, and made the scope's head;
    at `seq` (one never used) or the next. Returns its seq."""
    head = await owner.fetchrow(
        "SELECT last_seq, last_hash FROM audit_chain_heads WHERE scope = $1", scope
    )
    seq = seq or await owner.fetchval("SELECT nextval('audit_events_seq')")
    recorded = (datetime.now(UTC) - timedelta(days=days)).replace(microsecond=0)
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "occurred_at": recorded,
        "scope": scope,
        "actor": "auth0|mallory",
        **dict.fromkeys(("client_id", "session_id", "token_id", "source_ip", "user_agent")),
        "action": "patient.deleted",
        "crud": "D",
        "outcome": "success",
        **dict.fromkeys(("outcome_reason", "entity_type", "entity_id", "patient_id")),
        "request_id": None,
        "detail": canonical_detail({}),
    }
    hash_ = link_hash(seq, recorded, content_digest(row), head["last_hash"])
    await owner.execute(
        "INSERT INTO audit_events (seq, id, occurred_at, recorded_at, scope, actor, action, "
        "crud, outcome, detail, prev_hash, hash) "
        "VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8, '{}', $9, $10)",
        seq,
        row["id"],
        recorded,
        scope,
        row["actor"],
        row["action"],
        row["crud"],
        row["outcome"],
        head["last_hash"],
        hash_,
    )
    await owner.execute(
        "UPDATE audit_chain_heads SET last_seq = $2, last_hash = $3 WHERE scope = $1",
        scope,
        seq,
        hash_,
    )
    return int(seq)


async def _recompute(owner: asyncpg.Connection, scope: str) -> None:
    """Recompute the hash of every event of `scope` and its head, as after an edit."""
    rows = await owner.fetch(
        "SELECT *, detail::text AS detail_text FROM audit_events WHERE scope = $1 ORDER BY seq",
        scope,
    )
    prev = None
    for row in rows:
        values = dict(row.items())
        values["detail"] = canonical_detail(orjson.loads(row["detail_text"]))
        values["prev_hash"] = prev
        hash_ = event_hash(values)
        if (row["prev_hash"], row["hash"]) != (prev, hash_):
            await owner.execute(
                "UPDATE audit_events SET prev_hash = $2, hash = $3 WHERE seq = $1",
                row["seq"],
                prev,
                hash_,
            )
        prev = hash_
    last = rows[-1]["seq"]
    await owner.execute(
        "UPDATE audit_chain_heads SET last_seq = $2, last_hash = $3 WHERE scope = $1",
        scope,
        last,
        prev,
    )


async def rewrite_and_recompute(owner: asyncpg.Connection, scope: str, seq: int) -> None:
    """A superuser turns one event's outcome into `denied`, then recomputes the hash of
    every event after it and the scope's head: the chain is consistent again."""
    await owner.execute("SET session_replication_role = replica")  # user triggers off
    try:
        await owner.execute("UPDATE audit_events SET outcome = 'denied' WHERE seq = $1", seq)
        await _recompute(owner, scope)
    finally:
        await owner.execute("SET session_replication_role = origin")


# The tables whose triggers refuse the owner's changes.
_GUARDED = ("audit_events", "audit_chain_heads", "audit_event_patients", "audit_digests")


async def launder(owner: asyncpg.Connection, scope: str, seq: int, *, keep: int) -> None:
    """The attack of the security review, as the migrations owner, in one transaction:
    user triggers off, the event `seq` of `scope` deleted, the later hashes of the scope and
    its head recomputed, the digests after digest `keep` deleted, triggers back on. The
    log verifies, and the digests table ends at a digest that still holds."""
    async with owner.transaction():
        for table in _GUARDED:
            await owner.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        await owner.execute("DELETE FROM audit_event_patients WHERE seq = $1", seq)
        await owner.execute("DELETE FROM audit_events WHERE seq = $1 AND scope = $2", seq, scope)
        await _recompute(owner, scope)
        await owner.execute("DELETE FROM audit_digests WHERE number > $1", keep)
        for table in _GUARDED:
            await owner.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


async def fetch_export(
    client: httpx.AsyncClient, headers: dict[str, str], directory: Path, **window: str
) -> tuple[Path, Path, Path]:
    """An auditor's export, as docs/audit.md fetches it: the events (NDJSON), every digest
    page, and the keys. Returns the three files."""
    events = directory / "events.ndjson"
    digests = directory / "digests.ndjson"
    keys = directory / "keys.json"
    response = await client.get(
        "/api/audit-events/export", params={"format": "ndjson", **window}, headers=headers
    )
    assert response.status_code == 200, response.text
    events.write_bytes(response.content)
    lines: list[bytes] = []
    params: dict[str, Any] = {"limit": 200}
    while True:
        page = await client.get("/api/audit-events/digests", params=params, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        lines += [orjson.dumps(item) + b"\n" for item in body["items"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    digests.write_bytes(b"".join(lines))
    keys_response = await client.get("/.well-known/audit-keys")
    assert keys_response.status_code == 200
    keys.write_bytes(keys_response.content)
    return events, digests, keys
