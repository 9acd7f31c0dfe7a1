"""The audit log page's query string: the filter form's fields, checked as the API checks
its own (a window of at most 31 days, an action code or family, an outcome, a patient id),
and its keyset cursor. Bad fields are reported by name, never echoing a value back into
an error message."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from app.audit.query import MAX_WINDOW, AuditFilters
from app.core.text import control_problem

FIELDS = ("since", "until", "actor", "patient", "action", "outcome")
OUTCOMES = ("success", "denied", "failed")
DEFAULT_WINDOW = timedelta(hours=24)
MAX_TEXT = 256
_ACTION = re.compile(r"[a-z_]+(\.[a-z_]+)*(\.\*)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


@dataclass
class LogQuery:
    """What the form showed (`form`), the filters when every field was valid, the
    problems by field name, and the cursor as sent."""

    form: dict[str, str]
    filters: AuditFilters | None = None
    errors: dict[str, str] = field(default_factory=dict)
    cursor: str | None = None


def _time(text: str) -> datetime:
    """An ISO time; without an offset (a `datetime-local` field) it is UTC."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _form_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def parse_log_query(params: Mapping[str, str], scope: str, now: datetime) -> LogQuery:
    """The filters for `scope` from the page's query string; the default window is the last
    24 hours (to the next whole minute)."""
    errors: dict[str, str] = {}
    for name in params:
        if name not in (*FIELDS, "cursor"):
            errors[name] = "not a field of this form"
    text = {name: params.get(name, "").strip() for name in FIELDS}
    for name, value in text.items():
        problem = control_problem(value)
        if problem is None and len(value) > MAX_TEXT:
            problem = f"at most {MAX_TEXT} characters"
        if problem is not None:
            errors[name] = problem
            text[name] = ""
    end = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    until = since = None
    try:
        until = _time(text["until"]) if text["until"] else end
    except ValueError:
        errors["until"] = "a time like 2026-01-31T13:45"
    try:
        since = _time(text["since"]) if text["since"] else (until or end) - DEFAULT_WINDOW
    except ValueError:
        errors["since"] = "a time like 2026-01-31T13:45"
    if since is not None and until is not None:
        if until <= since:
            errors["until"] = "must be after since"
        elif until - since > MAX_WINDOW:
            errors["until"] = "the window may be at most 31 days"
    patient = None
    if text["patient"]:
        try:
            patient = uuid.UUID(text["patient"])
        except ValueError:
            errors["patient"] = "a patient id (a UUID)"
    if text["action"] and not _ACTION.fullmatch(text["action"]):
        errors["action"] = "an action code (patient.read) or family (patient.*)"
    if text["outcome"] and text["outcome"] not in OUTCOMES:
        errors["outcome"] = "one of " + ", ".join(OUTCOMES)
    form = dict(text)
    form["since"] = _form_time(since) if since is not None else text["since"]
    form["until"] = _form_time(until) if until is not None else text["until"]
    cursor = params.get("cursor") or None
    if errors or since is None or until is None:
        return LogQuery(form, errors=errors)
    filters = AuditFilters(
        scope,
        since,
        until,
        actor=text["actor"] or None,
        action=text["action"] or None,
        patient_id=patient,
        outcome=cast(Literal["success", "denied", "failed"], text["outcome"]) or None,
    )
    return LogQuery(form, filters, cursor=cursor)


def parse_window(params: Mapping[str, str], scope: str, now: datetime) -> LogQuery:
    """Only a window (`since`, `until`), checked as the log's: the integrity and activity
    pages."""
    query = parse_log_query(
        {k: v for k, v in params.items() if k in ("since", "until")}, scope, now
    )
    for name in params:
        if name not in ("since", "until"):
            query.errors[name] = "not a field of this form"
    if query.errors:
        query.filters = None
    return query


def cursor_payload(filters: AuditFilters, key: tuple[datetime, int]) -> dict[str, Any]:
    """What the next page's cursor holds: the filters' fingerprint and the keyset position."""
    return {
        "k": "console",
        "f": filters.fingerprint(),
        "t": (key[0] - _EPOCH) // _MICRO,
        "q": key[1],
    }


def cursor_position(
    filters: AuditFilters, payload: Mapping[str, Any]
) -> tuple[datetime, int] | None:
    """The keyset position of a cursor made for these filters; None for any other."""
    t, q = payload.get("t"), payload.get("q")
    if payload.get("k") != "console" or payload.get("f") != filters.fingerprint():
        return None
    if (
        not (isinstance(t, int) and isinstance(q, int))
        or isinstance(t, bool)
        or isinstance(q, bool)
    ):
        return None
    return _EPOCH + t * _MICRO, q


def route_of(action: str, detail: Mapping[str, Any]) -> str:
    """Through which way an event disclosed or changed a patient, in words."""
    view = detail.get("view")
    if view == "fhir":
        return "FHIR"
    if isinstance(view, str) and view.startswith("console"):
        return "console"
    if detail.get("via") == "profile":
        return "profile page"
    if action == "patient.searched":
        return "search"
    if action.startswith("audit."):
        return "audit log"
    if action.startswith("patient."):
        return {"patient.read": "read"}.get(action, "change")
    return action
