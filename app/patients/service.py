"""Patient operations as the API offers them: each one does its work, records its audit
event, and tells a refusal from a success, so a handler only parses and replies.

Create is seed diagram 4: the row and its `patient.created` event commit together. Without
an Idempotency-Key they commit in one transaction with concurrent requests' creates
(`app.patients.creates`, group commit); with a key,
or when the identifier is taken, one transaction claims the key, inserts, stores the reply
and records the event last. Refusals (another scope's patient, a deleted one, a stale
version, a duplicate identifier) are recorded on a connection of their own, after the
request's transaction has rolled back (`events.refusals_recorded`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from databases import Database

from app.audit.batcher import AuditWriter
from app.audit.events import Actor
from app.audit.record import record_event
from app.core.db import connection, transaction
from app.core.timings import phase
from app.http import idempotency
from app.patients import repository
from app.patients.creates import CreateWriter
from app.patients.events import (
    created_event,
    patient_event,
    read_event,
    refusal_event,
    refusals_recorded,
)
from app.patients.repository import DuplicateIdentifier
from app.patients.schemas import Patient, PatientCreate, etag, patient_json


@dataclass(frozen=True, slots=True)
class Created:
    """The reply to a create: the patient and its headers, or the replay of the first
    reply to the same Idempotency-Key (`replayed`)."""

    body: Patient
    headers: dict[str, str]
    replayed: bool = False


def _location(row: asyncpg.Record) -> dict[str, str]:
    return {"Location": f"/api/patients/{row['id']}", "ETag": etag(row["version"])}


async def create_patient(
    database: Database,
    creates: CreateWriter,
    actor: Actor,
    scope: str,
    body: PatientCreate,
    *,
    idempotency_key: str | None,
) -> Created:
    """Create a patient in `scope` and record it; `DuplicateIdentifier` (recorded) when a
    live patient of the scope has the identifier."""
    created_by = actor.sub or ""
    fields = body.fields()
    if idempotency_key is None:  # the usual case: committed with concurrent creates
        patient_id = uuid4()
        with phase("write"):
            row = await creates.create(
                patient_id, scope, created_by, fields, actor, created_event(patient_id, fields)
            )
        if row is not None:
            return Created(patient_json(row), _location(row))
        # The identifier is taken (or was, a moment ago): the full path finds out, answers
        # 409 and records the refusal.
    request_hash = idempotency.fingerprint(
        "POST /api/patients", scope, body.model_dump(mode="json")
    )
    refusal: DuplicateIdentifier | None = None
    async with transaction(database) as conn:
        if idempotency_key is not None:
            stored = await idempotency.claim(conn, created_by, idempotency_key, request_hash)
            if stored is not None:
                return await _replay(conn, actor, stored)
        try:
            row = await repository.create_patient(conn, scope, created_by, fields)
        except DuplicateIdentifier as duplicate:
            refusal = duplicate
            existing = {"existing_id": duplicate.extra["existing_id"]}
            result = idempotency.StoredResponse(409, existing)
            event = refusal_event("patient.created", "C", duplicate.existing_id, duplicate)
        else:
            result = idempotency.StoredResponse(201, patient_json(row), _location(row))
            event = created_event(row["id"], fields)
        if idempotency_key is not None:
            await idempotency.complete(conn, created_by, idempotency_key, result)
        await record_event(conn, actor, event)  # last: it holds the scope's chain until commit
    if refusal is not None:
        raise refusal
    return Created(result.body, result.headers)


async def _replay(conn: Any, actor: Actor, stored: idempotency.StoredResponse) -> Created:
    replayed = {"Idempotent-Replayed": "true"}
    if stored.status == 409:
        existing = stored.body.get("existing_id")
        raise DuplicateIdentifier(UUID(existing) if existing else None, headers=replayed)
    # The replay shows the patient again: a read, recorded before it is sent.
    await record_event(conn, actor, read_event(UUID(stored.body["id"]), "idempotent_replay"))
    return Created(stored.body, stored.headers | replayed, replayed=True)


async def read_patient(
    database: Database, audit: AuditWriter, actor: Actor, scope: str, patient_id: UUID
) -> asyncpg.Record:
    """The live patient, returned once its `patient.read` event is committed."""
    async with refusals_recorded(database, actor, "patient.read", "R", patient_id):
        async with connection(database) as conn:
            with phase("page_query"):
                row = await repository.read_patient(conn, scope, patient_id)
        with phase("audit_wait"):
            await audit.record(actor, [read_event(patient_id, "get")])
    return row


async def update_patient(
    database: Database,
    actor: Actor,
    scope: str,
    patient_id: UUID,
    changes: dict[str, Any],
    *,
    expected_version: int,
) -> asyncpg.Record:
    """Apply `changes` if `expected_version` is current; the event names the changed fields."""
    async with (
        refusals_recorded(database, actor, "patient.updated", "U", patient_id),
        transaction(database) as conn,
    ):
        row, changed = await repository.update_patient(
            conn,
            scope,
            patient_id,
            changes,
            expected_version=expected_version,
            changed_by=actor.sub,
            request_id=actor.request_id,
        )
        detail = {"fields": changed, "version": row["version"]}
        await record_event(
            conn, actor, patient_event("patient.updated", "U", patient_id, detail=detail)
        )
    return row


async def delete_patient(
    database: Database,
    actor: Actor,
    scope: str,
    patient_id: UUID,
    *,
    expected_version: int | None,
) -> None:
    """Soft-delete the patient (if `expected_version`, only while it is current)."""
    async with (
        refusals_recorded(database, actor, "patient.deleted", "D", patient_id),
        transaction(database) as conn,
    ):
        row = await repository.delete_patient(
            conn,
            scope,
            patient_id,
            expected_version=expected_version,
            deleted_by=actor.sub,
            request_id=actor.request_id,
        )
        detail = {"version": row["version"]}
        await record_event(
            conn, actor, patient_event("patient.deleted", "D", patient_id, detail=detail)
        )
