"""Issuing, storing and reading the signed digests of the audit chain heads.

`issue_digest` signs what changed since the last digest (app/audit/signing.py has the
format) and stores it through `audit_digests_append` (migrations/0009_audit_integrity.sql),
the only way into the append-only `audit_digests`. Every copy of the service runs a
`DigestIssuer`; the digest lock and the "one per interval" check taken under it mean one
digest per interval whichever copies wake up. `python -m app audit digest` issues one on
demand. The heads cover every event up to the audit watermark (migrations/0002), so a
transaction that commits late is signed by the next digest, never skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from databases import Database

from app.audit.signing import Digest, KeyRing, heads_of
from app.core.db import connection
from app.core.errors import DATABASE_OUTAGES
from app.core.tasks import cancelled

logger = logging.getLogger(__name__)

# The digest lock: the two-integer advisory key ('AUDG', 0) that audit_digests_append takes.
DIGEST_LOCK = 0x41554447

_LOCK = "SELECT pg_advisory_xact_lock($1, 0)"
_LAST = "SELECT number, issued_at, watermark, hash FROM audit_digests ORDER BY number DESC LIMIT 1"
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
_PAGE = """
SELECT number, issued_at, kid, after_seq, watermark, heads, prev_hash, hash, jws
FROM audit_digests
WHERE issued_at >= $1 AND issued_at < $2 AND (issued_at, number) > ($3, $4)
ORDER BY issued_at, number LIMIT $5
"""
# Every key that signed a digest still kept (the retired ones too), oldest first.
_SIGNED_WITH = """
SELECT public_jwk::text AS jwk FROM audit_signing_keys k
WHERE EXISTS (SELECT 1 FROM audit_digests d WHERE d.kid = k.kid)
ORDER BY first_signed_at, kid
"""


@dataclass(frozen=True, slots=True)
class IssuedDigest:
    number: int
    issued_at: datetime
    kid: str
    watermark: int
    heads: int


def _slot(moment: datetime, interval_seconds: int) -> int:
    return int(moment.timestamp()) // interval_seconds


async def issue_digest(
    conn: asyncpg.Connection, ring: KeyRing, *, interval_seconds: int | None = None
) -> IssuedDigest | None:
    """Sign and store the next digest, in a transaction of its own.

    With `interval_seconds`, only when no digest was issued yet in the current interval
    (by the database's clock): None then. `conn` must not be in a transaction (the
    watermark needs READ COMMITTED statements, migrations/0002).
    """
    async with conn.transaction():
        await conn.execute(_LOCK, DIGEST_LOCK)
        last = await conn.fetchrow(_LAST)
        issued_at: datetime = await conn.fetchval("SELECT clock_timestamp()")
        if (
            interval_seconds
            and last is not None
            and _slot(last["issued_at"], interval_seconds) == _slot(issued_at, interval_seconds)
        ):
            return None
        after = last["watermark"] if last is not None else 0
        watermark = max(after, await conn.fetchval("SELECT audit_events_watermark()"))
        rows = await conn.fetch(_HEADS, after, watermark)
        digest = Digest(
            number=last["number"] + 1 if last is not None else 1,
            issued_at=issued_at,
            prev_hash=bytes(last["hash"]) if last is not None else None,
            after_seq=after,
            watermark=watermark,
            heads=heads_of((r["scope"], r["seq"], bytes(r["hash"])) for r in rows),
        )
        jws = ring.sign(digest)
        await conn.execute(_APPEND, jws, orjson.dumps(ring.signer_jwk).decode())
    return IssuedDigest(digest.number, issued_at, ring.kid, watermark, len(digest.heads))


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


async def keys_that_signed(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """The public JWK of every key that signed a digest still kept."""
    return [orjson.loads(r["jwk"]) for r in await conn.fetch(_SIGNED_WITH)]


class DigestIssuer:
    """One per process: a digest at start (unless this interval has one) and then at the
    start of every interval. Failures are logged and retried at the next interval."""

    def __init__(self, database: Database, ring: KeyRing, *, interval_seconds: int) -> None:
        self.database = database
        self.ring = ring
        self.interval_seconds = interval_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="audit-digests")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancelled(task)

    async def run_once(self) -> IssuedDigest | None:
        try:
            async with connection(self.database) as conn:
                issued = await issue_digest(conn, self.ring, interval_seconds=self.interval_seconds)
        except DATABASE_OUTAGES as exc:
            logger.warning("audit digest skipped: database unavailable (%s)", type(exc).__name__)
            return None
        except Exception:
            logger.exception("audit digest failed")
            return None
        if issued is not None:
            logger.info(
                "audit digest issued",
                extra={
                    "number": issued.number,
                    "kid": issued.kid,
                    "watermark": issued.watermark,
                    "heads": issued.heads,
                },
            )
        return issued

    async def _loop(self) -> None:
        while True:
            await self.run_once()
            # Just past the next boundary, so the database's clock is in the new interval.
            await asyncio.sleep(self.interval_seconds - time.time() % self.interval_seconds + 0.5)
