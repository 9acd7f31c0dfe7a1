"""Writing audit events inside the caller's transaction, or on a connection of their own.

`record_event` writes inside the caller's transaction, so a change and its record commit
together; `record_change` does both in one statement. `record_independently` uses a
connection of its own, so a denied or failed request is recorded even when the request's
transaction rolls back (app/audit/edge.py builds those from a request).

Each write takes its scope's chain lock before it takes seq numbers and holds it until its
transaction ends (migrations/0002_audit.sql), so writers in one scope queue while writers
in other scopes proceed. Record events last in a transaction: the lock is held from the
record to the commit. For the same reason, record a failure only after the request's own
transaction has ended, or it waits for a lock its own request holds.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import asyncpg
from databases import Database

from app.audit.events import PER_EVENT_COLUMNS, Actor, Event, Prepared, prepare
from app.core.db import transaction

# One round trip: the function (migrations/0002_audit.sql) locks the scope's chain, takes
# the seq numbers and the recording time, links the content digests and inserts the batch.
_APPEND = """
SELECT audit_events_append($1, $2, $3, $4, $5, $6, $7, $8, $9::uuid[], $10::timestamptz[],
    $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
    $17::uuid[], $18::jsonb[], $19::bytea[])
"""
_APPEND_ONE = """
SELECT audit_events_append_one($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
    $15, $16, $17, $18::jsonb, $19)
"""


def _append_one_call(first: int) -> str:
    """`audit_events_append_one(...)` with its parameters numbered from `$first`, for a
    statement that records its own change (`_append_one_arguments` gives the values)."""
    casts = {17: "::jsonb"}
    params = ", ".join(f"${first + n}{casts.get(n, '')}" for n in range(19))
    return f"audit_events_append_one({params})"


def _append_one_arguments(prepared: Prepared) -> list[Any]:
    """The values of `_append_one_call` for one prepared event."""
    if len(prepared.rows) != 1:
        raise ValueError("append_one_arguments takes exactly one event")
    row = prepared.rows[0]
    return [
        *prepared.common.values(),
        *(row[name] for name in PER_EVENT_COLUMNS),
        row["detail"],
        row["content"],
    ]


async def record_events(conn: asyncpg.Connection, actor: Actor, events: Sequence[Event]) -> None:
    """Append events to the actor's scope chain, in order, inside the caller's transaction.

    One statement. From it to the end of the caller's transaction, other writers in the
    same scope wait: record events last, just before the commit, and for one scope per
    transaction (two transactions recording in scopes A and B in opposite orders deadlock,
    and Postgres aborts one of them). Reads, which change nothing, record through the
    process's `AuditWriter` instead (app/audit/batcher.py): batched with other requests'.
    """
    if not events:
        return
    prepared = prepare(actor, events)
    common, rows = prepared.common, prepared.rows
    if len(rows) == 1:
        await conn.execute(_APPEND_ONE, *_append_one_arguments(prepared))
        return
    await conn.execute(
        _APPEND,
        *common.values(),
        *([row[name] for row in rows] for name in PER_EVENT_COLUMNS),
        [row["detail"] for row in rows],
        [row["content"] for row in rows],
    )


async def record_event(conn: asyncpg.Connection, actor: Actor, event: Event) -> None:
    """Append one event inside the caller's transaction."""
    await record_events(conn, actor, [event])


async def record_independently(database: Database, actor: Actor, event: Event) -> None:
    """Record on a connection and transaction of its own (denied and failed requests)."""
    async with transaction(database) as conn:
        await record_event(conn, actor, event)


@functools.lru_cache(maxsize=64)
def _change_recorded(change: str, params: int) -> str:
    return (
        f"WITH change AS ({change})\n"
        f"SELECT change.*, {_append_one_call(params + 1)} AS recorded FROM change"
    )


async def record_change(
    conn: asyncpg.Connection, change: str, arguments: Sequence[Any], actor: Actor, event: Event
) -> asyncpg.Record | None:
    """Run `change` (one data-modifying statement whose RETURNING gives at most one row) and
    append `event` for the row it returns, as one statement: one round trip, and, outside a
    transaction, one autocommitted transaction of its own.

    Returns the changed row (with a `recorded` column to ignore); None, and nothing
    recorded, when the change returned no row (an `ON CONFLICT DO NOTHING` that hit).
    """
    prepared = prepare(actor, [event])
    row: asyncpg.Record | None = await conn.fetchrow(
        _change_recorded(change, len(arguments)), *arguments, *_append_one_arguments(prepared)
    )
    return row
