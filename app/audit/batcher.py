"""Group commit for audit events that accompany no change: reads of patient data.

A read changes nothing, so its record needs no transaction of the request's own. Every
request hands its events to the process's `AuditWriter` and waits until they are committed
before it sends the data ("recorded before the data is sent": ARCHITECTURE). The writer
sends whatever requests have queued as one statement (`audit_events_append_batch`,
migrations/0007_audit_batches.sql) in one autocommitted transaction, so concurrent reads
share one round trip, one commit and one WAL flush instead of paying for one each. With
one request at a time it writes at once: batching adds no wait, only sharing.

The queueing, and the retry of a failed batch one request at a time, are
`app.core.groupcommit`'s. When the database is unreachable every waiting request fails, with
the pool's `DatabaseUnavailable` (503): no read is served unrecorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import asyncpg
from databases import Database

from app.audit.events import ACTOR_COLUMNS, PER_EVENT_COLUMNS, Actor, Event, Prepared, prepare
from app.core.db import connection
from app.core.groupcommit import GroupCommit
from app.core.metrics import AUDIT_BATCHES

_APPEND_BATCH = """
SELECT audit_events_append_batch($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
    $6::inet[], $7::text[], $8::text[], $9::int4[], $10::uuid[], $11::timestamptz[],
    $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
    $18::uuid[], $19::jsonb[], $20::bytea[])
"""
_OWN = (*PER_EVENT_COLUMNS, "detail", "content")


def append_arguments(batch: Sequence[Prepared]) -> list[list[Any]]:
    """The arguments of `audit_events_append_batch` for these requests' events."""
    arguments: list[list[Any]] = [[p.common[name] for p in batch] for name in ACTOR_COLUMNS]
    arguments.append([group for group, p in enumerate(batch, 1) for _ in p.rows])
    rows = list(chain.from_iterable(p.rows for p in batch))
    arguments += ([row[name] for row in rows] for name in _OWN)
    return arguments


async def record_many(
    conn: asyncpg.Connection, groups: Sequence[tuple[Actor, Sequence[Event]]]
) -> None:
    """Append several actors' events (in several scopes) in one statement, inside the
    caller's transaction. The function takes the scopes' chain locks in one global order,
    so two transactions doing this never deadlock (`record_events` per scope could)."""
    await append_prepared(conn, [prepare(actor, events) for actor, events in groups if events])


async def append_prepared(conn: asyncpg.Connection, batch: Sequence[Prepared]) -> None:
    """Append requests' prepared events in one statement (inside the caller's transaction,
    if any); the scopes' chain locks are taken in one global order."""
    if batch:
        await conn.execute(_APPEND_BATCH, *append_arguments(batch))


class AuditWriter(GroupCommit[Prepared, None]):
    """One per process. `record` returns once the events are committed.

    `max_events` bounds one statement; `max_in_flight` statements may run at once (two:
    one commits while the next batch forms and encodes). Scopes are locked in one global
    order by the function, so overlapping batches queue and never deadlock.
    """

    what = "an audit batch"

    def __init__(self, database: Database, *, max_events: int = 2000, max_in_flight: int = 2):
        super().__init__(max_size=max_events, max_in_flight=max_in_flight)
        self._database = database

    async def record(self, actor: Actor, events: Sequence[Event]) -> None:
        """Record `events` of one request; raise when they could not be committed."""
        if events:
            await self.submit(prepare(actor, events))  # a bad event fails here, alone

    def size(self, item: Prepared) -> int:
        return len(item.rows)

    def committed(self, count: int) -> None:
        AUDIT_BATCHES.observe(count)

    async def commit(self, batch: Sequence[Prepared]) -> list[None]:
        async with connection(self._database) as conn:
            await append_prepared(conn, batch)
        return [None] * len(batch)
