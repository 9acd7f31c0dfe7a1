"""The audit events the console's views record: what was asked and how many events were
shown, never a patient value."""

from __future__ import annotations

import uuid
from typing import Any

from app.audit.events import Event
from app.audit.query import AuditFilters


def log_viewed(filters: AuditFilters, returned: int) -> Event:
    """A page of the audit log shown in the console."""
    detail: dict[str, Any] = {
        "view": "console.log",
        "returned": returned,
        "since": filters.since.isoformat(),
        "until": filters.until.isoformat(),
        "filters": filters.used(),
    }
    return Event("audit.read", "R", patient_id=filters.patient_id, detail=detail)


def event_viewed(seq: int, patient_id: uuid.UUID | None, found: bool) -> Event:
    """One event's detail shown in the console (the patient it named, if any)."""
    detail = {"view": "console.event", "seq": seq, "returned": int(found)}
    return Event(
        "audit.read",
        "R",
        entity_type="audit_event",
        entity_id=str(seq),
        patient_id=patient_id,
        detail=detail,
    )


def report_viewed(patient_id: uuid.UUID, view: str, returned: int | None) -> Event:
    """A patient's access report shown (`console.access_report`) or downloaded
    (`console.access_report.csv`, `console.access_report.fhir`; `returned` unknown then)."""
    detail: dict[str, Any] = {"view": view}
    if returned is not None:
        detail["returned"] = returned
    return Event(
        "audit.read",
        "R",
        entity_type="patient",
        entity_id=str(patient_id),
        patient_id=patient_id,
        detail=detail,
    )
