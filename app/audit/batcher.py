"""Group commit for audit events that accompany no change: reads of patient data.

A read changes nothing, so its record needs no transaction of the request's own. Every
request hands its events to the process's `AuditWriter` and waits until they are committed
before it sends the data ("recorded before the data is sent": ARCHITECTURE). The writer
sends whatever requests have queued as one statement (`audit_events_append_batch`,
migrations/0007_audit_batches.sql) in one autocommitted transaction, so concurrent reads
share one round trip, one commit and one WAL flush instead of paying for one each. With
one request at a time it writes at once: batching adds no wait, only sharing.

A batch that fails for a reason of its own data (not the database's state) is retried one
request at a time, so a bad request fails alone. When the database is unreachable every
waiting request fails, with the pool's `DatabaseUnavailable` (503): no read is served
unrecorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import asyncpg
from databases import Database

from app.audit.events import ACTOR_COLUMNS, PER_EVENT_COLUMNS, Actor, Event, Prepared, prepare
from app.core.db import connection
from app.core.errors import DATABASE_OUTAGES, DatabaseUnavailable
from app.core.metrics import AUDIT_BATCHES

logger = logging.getLogger(__name__)

_APPEND_BATCH = """
SELECT audit_events_append_batch($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
    $6::inet[], $7::text[], $8::text[], $9::int4[], $10::uuid[], $11::timestamptz[],
    $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
    $18::uuid[], $19::jsonb[], $20::bytea[])
"""
_OWN = (*PER_EVENT_COLUMNS, "detail", "content")


@dataclass(slots=True)
class _Waiting:
    prepared: Prepared
    done: asyncio.Future[None]


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
    batch = [prepare(actor, events) for actor, events in groups if events]
    if batch:
        await conn.execute(_APPEND_BATCH, *append_arguments(batch))


class AuditWriter:
    """One per process. `record` returns once the events are committed.

    `max_events` bounds one statement; `max_in_flight` statements may run at once (two:
    one commits while the next batch forms and encodes). Scopes are locked in one global
    order by the function, so overlapping batches queue and never deadlock.
    """

    def __init__(self, database: Database, *, max_events: int = 2000, max_in_flight: int = 2):
        self._database = database
        self._max_events = max_events
        self._max_in_flight = max_in_flight
        self._queue: list[_Waiting] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # statements sent, for tests and the benchmark
        self.requests = 0

    async def record(self, actor: Actor, events: Sequence[Event]) -> None:
        """Record `events` of one request; raise when they could not be committed."""
        if not events:
            return
        prepared = prepare(actor, events)  # a bad event fails here, alone
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(prepared, done))
        if len(self._tasks) < self._max_in_flight:
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a request cancelled while it waits (the client went away) leaves its
        # record to be written with the rest, and does not fail the batch.
        await asyncio.shield(done)

    async def aclose(self) -> None:
        """Wait for the statements in flight (at shutdown, after the last request)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self) -> None:
        while self._queue:
            batch: list[_Waiting] = []
            size = 0
            while self._queue and (
                not batch or size + len(self._queue[0].prepared.rows) <= self._max_events
            ):
                waiting = self._queue.pop(0)
                batch.append(waiting)
                size += len(waiting.prepared.rows)
            await self._write(batch)

    async def _write(self, batch: list[_Waiting]) -> None:
        try:
            await self._append([w.prepared for w in batch])
        except DATABASE_OUTAGES as exc:
            reason = f"audit record not written: {type(exc).__name__}"
            for waiting in batch:  # each its own error: they are raised in separate tasks
                _settle([waiting], DatabaseUnavailable(reason))
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch, exc)
                return
            logger.warning(
                "an audit batch failed; retrying its requests one by one",
                extra={"requests": len(batch), "error": type(exc).__name__},
            )
            for waiting in batch:
                await self._write([waiting])
        else:
            _settle(batch, None)

    async def _append(self, batch: list[Prepared]) -> None:
        async with connection(self._database) as conn:
            await conn.execute(_APPEND_BATCH, *append_arguments(batch))
        self.batches += 1
        self.requests += len(batch)
        AUDIT_BATCHES.observe(len(batch))


def _settle(batch: list[_Waiting], error: BaseException | None) -> None:
    for waiting in batch:
        if waiting.done.done():
            continue
        if error is None:
            waiting.done.set_result(None)
        else:
            waiting.done.set_exception(error)
