"""Walking a scope's hash chain (app/audit/chain.py) over a time window: every event's hash
against its contents, every link against the event before, the order (within a scope
`recorded_at` never goes backwards as `seq` grows, so a backdated event shows), and the end
against the scope's recorded head."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg
import orjson

from app.audit.chain import CONTENT_COLUMNS, canonical_detail, event_hash


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of walking a scope's chain over a time window.

    `count` is the number of events found intact (before the break, when broken).
    """

    status: Literal["intact", "broken"]
    count: int
    first_seq: int | None = None
    last_seq: int | None = None
    broken_seq: int | None = None
    broken_id: uuid.UUID | None = None
    reason: str | None = None


_WINDOW = """
SELECT min(seq) AS first, max(seq) AS last FROM audit_events
WHERE scope = $1 AND recorded_at >= $2 AND recorded_at < $3
"""
_BEFORE = """
SELECT recorded_at, hash FROM audit_events WHERE scope = $1 AND seq < $2 ORDER BY seq DESC LIMIT 1
"""
_CHAIN = f"""
SELECT seq, recorded_at, prev_hash, hash,
    {", ".join(name for name, _ in CONTENT_COLUMNS if name != "detail")}, detail::text AS detail
FROM audit_events WHERE scope = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq
"""
_AFTER = """
SELECT seq, id, recorded_at, prev_hash FROM audit_events WHERE scope = $1 AND seq > $2
ORDER BY seq LIMIT 1
"""
_BACKWARDS = "the event was recorded before the event ahead of it in the chain: backdated"
_HEAD = "SELECT last_seq, last_hash FROM audit_chain_heads WHERE scope = $1"


async def verify_chain(
    conn: asyncpg.Connection, scope: str, since: datetime, until: datetime, *, batch: int = 2000
) -> ChainReport:
    """Recompute the chain of `scope` over the events recorded in [since, until).

    Checks every event's hash against its contents, its `prev_hash` against the event
    before it (including the one just before the window), that its `recorded_at` is not
    before that event's (seq order is chain order, so a backdated event breaks it: the one
    just after the window is held to both rules too), and, when the window reaches the end
    of the chain, that its last event is the scope's recorded head (so a removed tail
    shows). Runs in a read-only repeatable-read transaction of its own, so `conn` must not
    be inside a transaction; memory stays flat whatever the count (a cursor, in batches).
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        window = await conn.fetchrow(_WINDOW, scope, since, until)
        first, final = window["first"], window["last"]
        if first is None:
            return ChainReport("intact", 0)
        before = await conn.fetchrow(_BEFORE, scope, first)
        expected: bytes | None = before["hash"] if before is not None else None
        recorded: datetime | None = before["recorded_at"] if before is not None else None
        count, last_seq = 0, first
        async for row in conn.cursor(_CHAIN, scope, first, final, prefetch=batch):
            values = dict(row.items())
            try:
                values["detail"] = canonical_detail(orjson.loads(row["detail"]))
            except ValueError:  # a number jsonb accepts but we never write
                values["detail"] = row["detail"].encode()
            problem = None
            if event_hash(values) != row["hash"]:
                problem = "the event's hash does not match its contents"
            elif row["prev_hash"] != expected:
                problem = "the event's prev_hash does not match the event before it"
            elif recorded is not None and row["recorded_at"] < recorded:
                problem = _BACKWARDS
            if problem:
                return ChainReport(
                    "broken", count, first, row["seq"], row["seq"], row["id"], problem
                )
            expected, last_seq, count = row["hash"], row["seq"], count + 1
            recorded = row["recorded_at"]
        after = await conn.fetchrow(_AFTER, scope, last_seq)
        if after is not None:
            problem = None
            if after["prev_hash"] != expected:
                problem = "the event after the window does not link to its last event"
            elif recorded is not None and after["recorded_at"] < recorded:
                problem = _BACKWARDS
            if problem:
                return ChainReport(
                    "broken", count, first, last_seq, after["seq"], after["id"], problem
                )
        else:
            head = await conn.fetchrow(_HEAD, scope)
            if head is None or (head["last_seq"], head["last_hash"]) != (last_seq, expected):
                reason = "the chain does not end at the scope's recorded head: events removed"
                missing = head["last_seq"] if head is not None else last_seq
                return ChainReport("broken", count, first, last_seq, missing, None, reason)
        return ChainReport("intact", count, first, last_seq)
