"""The audit log at the HTTP edge: a request's actor, and the records of refused and failed
requests (`record_denial` is the auth part's `DenialHook`, app/auth/runtime.py)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace

from starlette.requests import Request

from app.audit.events import CRUD_OF_METHOD, Actor, Event
from app.audit.record import record_independently
from app.auth.tokens import Principal
from app.core.errors import AppError
from app.http.context import context

logger = logging.getLogger(__name__)


def actor_from(request: Request, principal: Principal | None, *, scope: str | None = None) -> Actor:
    """The actor of a request: the verified caller (if any), its address and user agent."""
    client = request.client
    anonymous = Actor(
        scope=scope or "anonymous",
        source_ip=client.host if client else None,
        user_agent=request.headers.get("user-agent") or None,
        request_id=getattr(request.state, "request_id", None),
    )
    return anonymous.acting_as(principal, scope=scope) if principal else anonymous


def _route_facts(request: Request) -> tuple[str, uuid.UUID | None]:
    """The matched route's path template (no ids in it) and the patient it is about."""
    route = request.scope.get("route")
    template = getattr(route, "path", None) or "<unmatched>"
    patient = request.path_params.get("patient_id")
    if patient is None and template.startswith("/api/patients/"):
        patient = request.path_params.get("id")
    return template, patient if isinstance(patient, uuid.UUID) else None


async def record_denial(request: Request, principal: Principal | None, error: AppError) -> None:
    """Record a refused request (403) independently of the request's own transaction.

    Fits `app.auth.runtime.DenialHook`. A 401 (no principal) is not recorded: anonymous
    traffic must not be able to write to the audit log; the access log and metrics count it.
    """
    if principal is None:
        return
    template, patient_id = _route_facts(request)
    event = Event(
        action="access.denied",
        crud=CRUD_OF_METHOD.get(request.method, "E"),
        outcome="denied",
        reason=error.detail,
        entity_type="route",
        entity_id=template,
        patient_id=patient_id,
        detail={"method": request.method, "status": error.status, "problem": error.type_name},
    )
    await record_independently(context(request).database, actor_from(request, principal), event)


async def record_failure(
    request: Request, principal: Principal | None, event: Event, error: AppError
) -> None:
    """Record that `event` failed (an Auth0 503, say) on a connection of its own.

    Call it where the error is caught, before re-raising, and outside the request's own
    transaction (which may roll back, and which holds the scope's chain lock if it recorded
    anything). A failure to record is logged and swallowed: the original error matters more.
    """
    failed = replace(
        event,
        outcome="failed",
        reason=error.detail,
        detail={**event.detail, "status": error.status, "problem": error.type_name},
    )
    try:
        await record_independently(
            context(request).database, actor_from(request, principal), failed
        )
    except Exception:
        logger.exception(
            "recording a failed request failed",
            extra={"request_id": getattr(request.state, "request_id", None)},
        )
