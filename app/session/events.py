"""The audit events of cookie sessions (docs/sessions.md, "The audit log"): each names the
session by its row id, never by a token or a cookie value."""

from __future__ import annotations

import uuid

from app.audit.events import Event
from app.session.cache import Session
from app.session.repository import Ended


def started_event(
    session_id: uuid.UUID, idle_seconds: float, absolute_seconds: float, refresh: str | None
) -> Event:
    return Event(
        "session.started",
        "C",
        entity_type="session",
        entity_id=str(session_id),
        detail={
            "idle_seconds": int(idle_seconds),
            "absolute_seconds": int(absolute_seconds),
            "refreshable": refresh is not None,
        },
    )


def ended_event(session: Session | Ended, reason: str, action: str = "session.ended") -> Event:
    return Event(
        action,
        "D" if action == "session.ended" else "E",
        entity_type="session",
        entity_id=str(session.id),
        detail={"reason": reason, "mode": "cookie"},
    )


def refresh_failed_event(session: Session | Ended, reason: str) -> Event:
    return Event(
        "session.refresh_failed",
        "E",
        outcome="failed",
        reason=reason,
        entity_type="session",
        entity_id=str(session.id),
    )
