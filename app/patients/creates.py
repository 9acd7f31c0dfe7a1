"""Group commit for creates: several requests' patients and their `patient.created` events
in one transaction.

A create without an Idempotency-Key writes a row and its event, and nothing else: the
process's `CreateWriter` takes what concurrent requests have queued and commits them
together (one multi-row insert, one append of their events, one commit and WAL flush), so
the row and its event still commit together and each request waits for its own commit.
Alone, a request takes the one-statement path (`repository.create_patient_recorded`): a
batch adds no wait and no round trip.

A row whose identifier is taken (by a live patient, or by an earlier request of the same
batch) is not inserted and its event not appended; the request gets None back and takes
the full path, which answers 409 and records the refusal. A batch that fails for a reason
of its own data is retried one request at a time (`app.core.groupcommit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from databases import Database

from app.audit.batcher import append_prepared
from app.audit.events import Actor, Event, Prepared, prepare
from app.core.db import connection, transaction
from app.core.groupcommit import GroupCommit
from app.core.metrics import PATIENT_CREATE_BATCHES
from app.patients import repository


@dataclass(frozen=True, slots=True)
class _New:
    patient_id: UUID
    scope: str
    created_by: str
    fields: Mapping[str, Any]
    actor: Actor
    event: Event
    prepared: Prepared  # the event, checked and encoded

    def values(self) -> tuple[Any, ...]:
        return repository.insert_values(self.patient_id, self.scope, self.created_by, self.fields)


class CreateWriter(GroupCommit[_New, asyncpg.Record | None]):
    """One per process. `create` returns the inserted row once it and its event are
    committed, or None (nothing written) when the identifier is taken."""

    what = "a batch of creates"

    def __init__(self, database: Database, *, max_rows: int = 200, max_in_flight: int = 2):
        super().__init__(max_size=max_rows, max_in_flight=max_in_flight)
        self._database = database

    async def create(
        self,
        patient_id: UUID,
        scope: str,
        created_by: str,
        fields: Mapping[str, Any],
        actor: Actor,
        event: Event,
    ) -> asyncpg.Record | None:
        # Prepared here, in the request's task: a bad event fails its own request alone.
        prepared = prepare(actor, [event])
        return await self.submit(
            _New(patient_id, scope, created_by, fields, actor, event, prepared)
        )

    def committed(self, count: int) -> None:
        PATIENT_CREATE_BATCHES.observe(count)

    async def commit(self, batch: Sequence[_New]) -> list[asyncpg.Record | None]:
        if len(batch) == 1:
            return [await self._one(batch[0])]
        async with transaction(self._database) as conn:
            rows = await repository.insert_patients(conn, [new.values() for new in batch])
            inserted = {str(row["id"]): row for row in rows}
            # The events of the rows inserted, in the batch's order: each scope's chain
            # grows in the order the requests queued.
            await append_prepared(
                conn, [new.prepared for new in batch if str(new.patient_id) in inserted]
            )
        return [inserted.get(str(new.patient_id)) for new in batch]

    async def _one(self, new: _New) -> asyncpg.Record | None:
        async with connection(self._database) as conn:
            return await repository.create_patient_recorded(
                conn, new.patient_id, new.scope, new.created_by, new.fields, new.actor, new.event
            )
