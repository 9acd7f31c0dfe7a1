"""The audit events of patient operations: action codes, ids and field names, never values.

One event per request. `patient.created` (C), `patient.read` (R: one patient, or a page of
them shown with the profile), `patient.updated` (U, the names of the fields that changed),
`patient.deleted` (D), `patient.searched` (E, the names of the filters used). An event that
shows several patients lists their ids in `detail.patient_ids`, in the order shown: its hash
covers them, and the database links each to the event (migrations/0008).

Refused attempts (another scope's patient, a deleted one, a stale version, a duplicate
identifier) are recorded with outcome `denied` or `failed`, on a
connection of their own so the request's rollback cannot erase them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from types import MappingProxyType
from typing import Any
from uuid import UUID

from databases import Database

from app.audit.events import Actor, Crud, Event
from app.audit.record import record_independently
from app.core.errors import AppError
from app.patients.repository import (
    DuplicateIdentifier,
    PatientGone,
    PatientNotFound,
    VersionMismatch,
)

logger = logging.getLogger(__name__)

REFUSALS: dict[type[AppError], tuple[Any, str]] = {
    PatientNotFound: ("denied", "not found in the caller's scope"),
    PatientGone: ("failed", "deleted"),
    VersionMismatch: ("failed", "stale version"),
    DuplicateIdentifier: ("failed", "duplicate identifier"),
}
_REFUSED = tuple(REFUSALS)


def patient_event(action: str, crud: Crud, patient_id: UUID | None, **more: Any) -> Event:
    return Event(
        action,
        crud,
        entity_type="Patient",
        entity_id=str(patient_id) if patient_id else None,
        patient_id=patient_id,
        **more,
    )


def read_event(patient_id: UUID, via: str) -> Event:
    """`via` says where the patient was shown: get, search, profile, idempotent_replay."""
    return patient_event("patient.read", "R", patient_id, detail=_via(via))


@functools.cache
def _via(via: str) -> MappingProxyType[str, str]:
    # One read-only detail per `via`: a page's events share it, and so its encoding.
    return MappingProxyType({"via": via})


def created_event(patient_id: UUID, fields: dict[str, Any]) -> Event:
    given = sorted(name for name, value in fields.items() if value is not None)
    return patient_event("patient.created", "C", patient_id, detail={"fields": given})


def searched_event(filters: Iterable[str], shown: Sequence[UUID], next_page: bool) -> Event:
    """A search and every patient its page showed."""
    detail = {
        "filters": list(filters),
        "returned": len(shown),
        "next_page": next_page,
        "patient_ids": [str(patient_id) for patient_id in shown],
    }
    return Event("patient.searched", "E", entity_type="Patient", detail=detail)


def listed_event(shown: Sequence[UUID], via: str) -> Event:
    """A page of patients shown without a search (`via`: profile)."""
    detail = {"via": via, "patient_ids": [str(patient_id) for patient_id in shown]}
    return Event("patient.read", "R", entity_type="Patient", detail=detail)


def refusal_event(action: str, crud: Crud, patient_id: UUID | None, error: AppError) -> Event:
    outcome, reason = REFUSALS[type(error)]
    return patient_event(
        action, crud, patient_id, outcome=outcome, reason=reason, detail={"status": error.status}
    )


@contextlib.asynccontextmanager
async def refusals_recorded(
    database: Database, actor: Actor, action: str, crud: Crud, patient_id: UUID
) -> AsyncIterator[None]:
    """Record a refusal raised inside (after the request's transaction rolled back), then
    let it propagate. A failure to record is logged, not raised: a refusal shows no patient
    data, so it need not fail with its record."""
    try:
        yield
    except _REFUSED as error:
        try:
            await record_independently(
                database, actor, refusal_event(action, crud, patient_id, error)
            )
        except Exception:
            logger.exception(
                "recording a refused patient request failed",
                extra={"request_id": actor.request_id, "action": action},
            )
        raise
