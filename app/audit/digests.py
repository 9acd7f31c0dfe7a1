"""Issuing, storing and reading the signed digests of the audit chain heads.

`issue_digest` signs what changed since the last digest (app/audit/signing.py has the
format) and stores it through `audit_digests_append` (migrations/0009 and 0011), the only
way into the append-only `audit_digests`, which takes a digest only under a key the
migrations owner registered (`register_keys`, `python -m app audit register-key`). Every
copy of the service runs a `DigestIssuer` (app/audit/runtime.py); the digest lock and the
"one per interval" check taken under it mean one digest per interval whichever copies
wake up. `python -m app audit digest` issues one on demand. The heads cover every event up
to the audit watermark (migrations/0002), so a transaction that commits late is signed by
the next digest. With each digest it extends the scopes' Merkle trees up to the same watermark
and signs their checkpoints (app/audit/trees.py).

Before it signs, the issuer checks the table against the last digest it knows (an
`Anchor`, app/audit/anchor.py): the table must still hold it unchanged, and every digest
after it must continue it, signed by a configured key. Otherwise someone rewrote the
digests (and likely the log under them), and `DigestRefused` stops the issuer: signing the
rewritten heads would vouch for them (docs/audit.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from app.audit.anchor import Anchor
from app.audit.signing import (
    Digest,
    DigestInvalid,
    KeyRing,
    ScopeNames,
    heads_of,
    jws_hash,
    scope_hash,
    scope_key_of,
    verify_digest,
)
from app.audit.trees import checkpoint_trees

# The digest lock: the two-integer advisory key ('AUDG', 0) that audit_digests_append takes.
DIGEST_LOCK = 0x41554447

_LOCK = "SELECT pg_advisory_xact_lock($1, 0)"
_LAST = "SELECT number, jws FROM audit_digests ORDER BY number DESC LIMIT 1"
_FROM = "SELECT number, jws FROM audit_digests WHERE number >= $1 ORDER BY number"
# Each scope whose chain moved past `after`: its last event at or below the watermark. Every
# such event committed before this statement's snapshot (the watermark was read before it),
# and its head row moved with it, so no scope is missed.
_HEADS = """
SELECT h.scope, e.seq, e.hash
FROM audit_chain_heads h
CROSS JOIN LATERAL (
    SELECT seq, hash FROM audit_events
    WHERE scope = h.scope AND seq <= $2 ORDER BY seq DESC LIMIT 1
) AS e
WHERE h.last_seq > $1 AND e.seq > $1
"""
_APPEND = "SELECT audit_digests_append($1, $2::jsonb)"
_REGISTER = "SELECT audit_signing_key_register($1, $2::jsonb)"
_PAGE = """
SELECT number, issued_at, kid, after_seq, watermark, heads, prev_hash, hash, jws
FROM audit_digests
WHERE issued_at >= $1 AND issued_at < $2 AND (issued_at, number) > ($3, $4)
ORDER BY issued_at, number LIMIT $5
"""


class DigestRefused(Exception):
    """The digests table does not continue the last digest the issuer knows, or its last
    digest is not signed by a configured key: nothing may be signed over it."""


@dataclass(frozen=True, slots=True)
class IssuedDigest:
    number: int
    issued_at: datetime
    kid: str
    watermark: int
    heads: int
    hash: bytes  # SHA-256 of its JWS


@dataclass(frozen=True, slots=True)
class DigestRun:
    """One run: the table's last digest it found and checked (None: the table held none),
    and the digest it issued (None: this interval has one already)."""

    found: Anchor | None
    issued: IssuedDigest | None

    @property
    def last(self) -> Anchor | None:
        """The table's last digest once the run is over: what the issuer knows next."""
        if self.issued is not None:
            return Anchor(self.issued.number, self.issued.hash)
        return self.found


def _slot(moment: datetime, interval_seconds: int) -> int:
    return int(moment.timestamp()) // interval_seconds


def _anchor(digest: Digest) -> Anchor:
    return Anchor(digest.number, digest.hash)


async def _checked_last(
    conn: asyncpg.Connection, ring: KeyRing, known: Anchor | None
) -> Digest | None:
    """The table's last digest, read from its signed payload, once the table is shown to
    continue `known` (None: trust the last digest, if signed by a configured key)."""
    if known is None:
        last = await conn.fetchrow(_LAST)
        rows = [last] if last is not None else []
    else:
        rows = await conn.fetch(_FROM, known.number)
        if not rows or rows[0]["number"] != known.number:
            raise DigestRefused(f"the table lacks {known}, which this issuer signed or saw")
    previous: Digest | None = None
    for row in rows:
        try:
            digest = verify_digest(row["jws"], ring.verifiers)
        except DigestInvalid as exc:
            raise DigestRefused(f"digest {row['number']} in the table: {exc}") from None
        if digest.number != row["number"]:
            raise DigestRefused(f"digest {row['number']} in the table is signed as {digest.number}")
        if previous is None and known is not None and digest.hash != known.hash:
            raise DigestRefused(
                f"digest {known.number} in the table ({digest.hash.hex()[:16]}…) is not {known}"
            )
        if previous is not None and digest.prev_hash != previous.hash:
            raise DigestRefused(f"digest {digest.number} does not continue {_anchor(previous)}")
        previous = digest
    return previous


async def issue_digest(
    conn: asyncpg.Connection,
    ring: KeyRing,
    names: ScopeNames,
    *,
    known: Anchor | None = None,
    interval_seconds: int | None = None,
) -> DigestRun:
    """Check the table against `known`, then sign and store the next digest, in a
    transaction of its own; `DigestRefused` when the table does not continue `known`.

    With `interval_seconds`, only when no digest was issued yet in the current interval
    (by the database's clock). `conn` must not be in a transaction (the watermark needs
    READ COMMITTED statements, migrations/0002).
    """
    async with conn.transaction():
        await conn.execute(_LOCK, DIGEST_LOCK)
        last = await _checked_last(conn, ring, known)
        issued_at: datetime = await conn.fetchval("SELECT clock_timestamp()")
        if (
            interval_seconds
            and last is not None
            and _slot(last.issued_at, interval_seconds) == _slot(issued_at, interval_seconds)
        ):
            return DigestRun(_anchor(last), None)
        after = last.watermark if last is not None else 0
        watermark = max(after, await conn.fetchval("SELECT audit_events_watermark()"))
        rows = await conn.fetch(_HEADS, after, watermark)
        digest = Digest(
            number=last.number + 1 if last is not None else 1,
            issued_at=issued_at,
            prev_hash=last.hash if last is not None else None,
            after_seq=after,
            watermark=watermark,
            heads=heads_of(((r["scope"], r["seq"], bytes(r["hash"])) for r in rows), names.current),
            scope_key=names.key_id,
        )
        jws = ring.sign(digest)
        await conn.execute(_APPEND, jws, orjson.dumps(ring.signer_jwk).decode())
        # The scopes' Merkle trees, up to the same watermark, and their checkpoints.
        await checkpoint_trees(conn, ring, names, digest.number, watermark)
    found = _anchor(last) if last is not None else None
    heads = len(digest.heads)
    return DigestRun(
        found, IssuedDigest(digest.number, issued_at, ring.kid, watermark, heads, jws_hash(jws))
    )


async def register_keys(conn: asyncpg.Connection, ring: KeyRing) -> list[tuple[str, str]]:
    """Register the public halves of the ring's signing keys, as the migrations owner:
    (kid, "registered" or "already registered") for each. A kid that names another key is
    refused by the database (`asyncpg.PostgresError`)."""
    done = []
    async with conn.transaction():
        for jwk in ring.public:
            state = await conn.fetchval(_REGISTER, jwk["kid"], orjson.dumps(jwk).decode())
            done.append((jwk["kid"], str(state)))
    return done


def digest_item(row: Any, scope: str, names: ScopeNames | None) -> dict[str, Any]:
    """A stored digest as the API shows it (and the offline check reads it), with
    `your_scope`: the caller's scope's name in it."""
    item = dict(row.items())
    item["prev_hash"] = row["prev_hash"].hex() if row["prev_hash"] is not None else None
    item["hash"] = row["hash"].hex()
    key_id = scope_key_of(row["jws"])
    if key_id is None:  # version 1: the unkeyed name
        item["your_scope"] = scope_hash(scope)
    else:  # None once that scope key has left AUDIT_SCOPE_KEY
        item["your_scope"] = names.name(scope, key_id) if names is not None else None
    return item


async def fetch_digests(
    conn: asyncpg.Connection,
    since: datetime,
    until: datetime,
    *,
    after: tuple[datetime, int] | None,
    limit: int,
) -> tuple[list[asyncpg.Record], tuple[datetime, int] | None]:
    """Digests issued in [since, until), oldest first, after the keyset `after`; and the
    key to continue from (None on the last page)."""
    start = after if after is not None else (since, 0)
    rows = await conn.fetch(_PAGE, since, until, start[0], start[1], limit + 1)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, (rows[-1]["issued_at"], rows[-1]["number"])
