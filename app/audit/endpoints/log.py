"""HTTP handlers: the audit log (query, checkpoint feed, export, verify, patient report).

Every handler reads the caller's scope only (`scope_of(principal)`), and records its own
read of the log before it answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from app.audit.edge import actor_from
from app.audit.events import Actor, Event
from app.audit.query import (
    MAX_WINDOW,
    AuditFilters,
    RowEncoder,
    archived_months,
    csv_lines,
    event_item,
    export_events,
    fetch_feed,
    fetch_page,
    fetch_patient_events,
    ndjson_lines,
)
from app.audit.record import record_event, record_independently
from app.audit.schemas import (
    FILTERS,
    AccessReportPage,
    AccessReportQuery,
    AuditEventOut,
    AuditEventsQuery,
    AuditEventsResponse,
    ChainVerification,
    ExportQuery,
    Filtered,
    VerifyQuery,
)
from app.audit.verify import verify_chain
from app.auth.requires import Endpoint, principal, requires
from app.core.db import connection, transaction
from app.core.errors import BadRequest, ValidationFailed
from app.http.bodies import JSONResponse, parse_query
from app.http.context import context
from app.http.cursors import open_cursor, sign_cursor
from app.http.openapi import Resp, operation

TAGS = ["audit"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)

# --- Helpers --------------------------------------------------------------------------------


def _invalid(*errors: tuple[str, str]) -> ValidationFailed:
    return ValidationFailed(
        "the query string is invalid", errors=[{"field": f, "message": m} for f, m in errors]
    )


def _filters(query: Filtered | VerifyQuery, scope: str) -> AuditFilters:
    """The window is required and at most 31 days long."""
    if query.since is None or query.until is None:
        missing = [name for name in ("since", "until") if getattr(query, name) is None]
        raise _invalid(*((name, "required") for name in missing))
    if query.until <= query.since:
        raise _invalid(("until", "must be after since"))
    if query.until - query.since > MAX_WINDOW:
        raise _invalid(("until", "the window may be at most 31 days"))
    extra = {name: getattr(query, name) for name in FILTERS} if isinstance(query, Filtered) else {}
    return AuditFilters(scope, query.since.astimezone(UTC), query.until.astimezone(UTC), **extra)


def _bad_cursor(message: str) -> BadRequest:
    return BadRequest("the cursor is not valid", errors=[{"field": "cursor", "message": message}])


def _open(request: Request, cursor: str, kind: str, bound: dict[str, Any]) -> dict[str, Any]:
    """A cursor we signed for this kind of list, this scope and these filters; else 400."""
    payload = open_cursor(context(request).settings.derived_key("audit-cursor"), cursor)
    if payload.get("k") != kind or not isinstance(payload.get("q"), int):
        raise _bad_cursor("not a cursor for this list")
    if payload.get("s") != bound["s"]:
        raise _bad_cursor("the cursor belongs to another scope")
    if any(payload.get(key) != value for key, value in bound.items()):
        raise _bad_cursor("the cursor was made for other filters")
    return payload


def _sign(request: Request, payload: dict[str, Any]) -> str:
    return sign_cursor(context(request).settings.derived_key("audit-cursor"), payload)


def _read_event(filters: AuditFilters | None, view: str, returned: int, **extra: Any) -> Event:
    """The `audit.read` event a query of the log leaves behind: what was asked, not values."""
    detail: dict[str, Any] = {"view": view, "returned": returned, **extra}
    patient_id = None
    if filters is not None:
        detail |= {
            "since": filters.since.isoformat(),
            "until": filters.until.isoformat(),
            "filters": filters.used(),
        }
        patient_id = filters.patient_id
    return Event("audit.read", "R", patient_id=patient_id, detail=detail)


def _actor(request: Request) -> Actor:
    return actor_from(request, principal(request))


# --- Handlers -------------------------------------------------------------------------------


@operation(
    "Query the audit log (newest first), or pull it in checkpoint mode",
    tags=TAGS,
    query=AuditEventsQuery,
    responses={200: AuditEventsResponse},
    description="With `from_seq` (and optional `take`) instead of a window, returns the "
    "scope's events with a greater seq in ascending order, only up to the safe watermark, "
    'as `{items, next_from_seq, watermark}` with `Link: <...>; rel="next"`. '
    "Every query is itself recorded as an `audit.read` event.",
)
@requires("read:audit_events")
async def list_audit_events(request: Request) -> Response:
    query = parse_query(request, AuditEventsQuery)
    if query.from_seq is not None:
        return await _checkpoint(request, query)
    if query.take is not None:
        raise _invalid(("take", "only with from_seq"))
    actor = _actor(request)
    filters = _filters(query, actor.scope)
    after = None
    if query.cursor is not None:
        bound = {"s": actor.scope, "f": filters.fingerprint()}
        payload = _open(request, query.cursor, "page", bound)
        if not isinstance(payload.get("t"), int):
            raise _bad_cursor("not a cursor for this list")
        after = (_EPOCH + payload["t"] * _MICRO, payload["q"])
    async with transaction(context(request).database) as conn:
        rows, next_key = await fetch_page(conn, filters, limit=query.limit, after=after)
        await record_event(conn, actor, _read_event(filters, "page", len(rows)))
    next_cursor = None
    if next_key is not None:
        micros = (next_key[0] - _EPOCH) // _MICRO
        payload = {"k": "page", "s": actor.scope, "f": filters.fingerprint()}
        next_cursor = _sign(request, payload | {"t": micros, "q": next_key[1]})
    return JSONResponse({"items": [event_item(r) for r in rows], "next_cursor": next_cursor})


async def _checkpoint(request: Request, query: AuditEventsQuery) -> Response:
    mixed = [
        name for name in ("since", "until", *FILTERS, "cursor") if getattr(query, name) is not None
    ]
    if "limit" in request.query_params:
        mixed.append("limit")
    if mixed:
        raise _invalid(*((name, "not allowed with from_seq") for name in mixed))
    assert query.from_seq is not None
    take = query.take or 100
    actor = _actor(request)
    async with transaction(context(request).database) as conn:  # READ COMMITTED: see fetch_feed
        rows, next_seq, watermark = await fetch_feed(conn, actor.scope, query.from_seq, take)
        event = _read_event(None, "feed", len(rows), from_seq=query.from_seq)
        await record_event(conn, actor, event)
    link = f'</api/audit-events?{urlencode({"from_seq": next_seq, "take": take})}>; rel="next"'
    items = [event_item(r) for r in rows]
    body = {"items": items, "next_from_seq": next_seq, "watermark": watermark}
    return JSONResponse(body, headers={"Link": link})


@dataclass(frozen=True, slots=True)
class ExportFormat:
    """One `format=` of the export: its media type, file name suffix and first bytes, and
    `lines(request, filters)`, which makes the encoder of a batch of rows. A part above the
    audit log offers its own through `routes_with` (app/fhir: `fhir-ndjson`)."""

    media_type: str
    suffix: str
    lines: Callable[[Request, AuditFilters], RowEncoder]
    header: bytes = b""


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "ndjson": ExportFormat("application/x-ndjson", "ndjson", lambda _r, _f: ndjson_lines),
    "csv": ExportFormat(
        "text/csv; charset=utf-8", "csv", lambda _r, _f: csv_lines, csv_lines((), header=True)
    ),
}


def export_endpoint(formats: Mapping[str, ExportFormat]) -> Endpoint:
    """The export handler, offering `formats`."""
    media_types = sorted({f.media_type.split(";")[0] for f in formats.values()})

    @operation(
        "Export the audit log (oldest first), streamed",
        tags=TAGS,
        query=ExportQuery,
        responses={
            200: Resp(
                AuditEventOut,
                "NDJSON, one event per line (`format=ndjson`), CSV with a header row "
                "(`format=csv`) whose cells are escaped against formula injection, or FHIR "
                "AuditEvent resources, one per line (`format=fhir-ndjson`, see docs/audit.md)",
                media_type="application/x-ndjson",
                many=True,
                also=tuple(m for m in media_types if m != "application/x-ndjson"),
            )
        },
    )
    @requires("read:audit_events")
    async def export_audit_events(request: Request) -> Response:
        return await _export(request, formats)

    return export_audit_events


async def _export(request: Request, formats: Mapping[str, ExportFormat]) -> Response:
    query = parse_query(request, ExportQuery)
    export = formats.get(query.format)
    if export is None:
        raise _invalid(("format", "not offered by this service"))
    actor = _actor(request)
    filters = _filters(query, actor.scope)
    database = context(request).database
    # Recorded before the first byte: an export that cannot be recorded does not start.
    event = Event(
        "audit.exported",
        "R",
        patient_id=filters.patient_id,
        detail={
            "format": query.format,
            "since": filters.since.isoformat(),
            "until": filters.until.isoformat(),
            "filters": filters.used(),
        },
    )
    await record_independently(database, actor, event)
    name = f"audit-events.{export.suffix}"
    return StreamingResponse(
        export_events(database, filters, export.lines(request, filters), header=export.header),
        media_type=export.media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


export_audit_events = export_endpoint(EXPORT_FORMATS)


@operation(
    "Verify the audit hash chain of the caller's scope over a window",
    tags=TAGS,
    query=VerifyQuery,
    responses={200: ChainVerification},
)
@requires("read:audit_events")
async def verify_audit_events(request: Request) -> Response:
    query = parse_query(request, VerifyQuery)
    actor = _actor(request)
    filters = _filters(query, actor.scope)
    database = context(request).database
    async with connection(database) as conn:
        report = await verify_chain(conn, actor.scope, filters.since, filters.until)
    detail = {
        "since": filters.since.isoformat(),
        "until": filters.until.isoformat(),
        "status": report.status,
        "count": report.count,
    }
    await record_independently(database, actor, Event("audit.verified", "E", detail=detail))
    return JSONResponse(
        ChainVerification(
            status=report.status,
            count=report.count,
            first_seq=report.first_seq,
            last_seq=report.last_seq,
            broken_seq=report.broken_seq,
            broken_id=report.broken_id,
            reason=report.reason,
        )
    )


@operation(
    "Every audit event about one patient in the caller's scope, oldest first, and the "
    "months archived out of the log (which it cannot list)",
    tags=["audit", "patients"],
    query=AccessReportQuery,
    responses={200: AccessReportPage},
)
@requires("read:audit_events")
async def patient_access_report(request: Request) -> Response:
    query = parse_query(request, AccessReportQuery)
    patient_id: uuid.UUID = request.path_params["patient_id"]
    actor = _actor(request)
    after = 0
    if query.cursor is not None:
        bound = {"s": actor.scope, "p": str(patient_id)}
        after = _open(request, query.cursor, "patient", bound)["q"]
    async with transaction(context(request).database) as conn:
        rows, next_seq = await fetch_patient_events(
            conn, actor.scope, patient_id, after_seq=after, limit=query.limit
        )
        archived = await archived_months(conn)
        event = Event(
            "audit.read",
            "R",
            entity_type="patient",
            entity_id=str(patient_id),
            patient_id=patient_id,
            detail={"view": "access_report", "returned": len(rows)},
        )
        await record_event(conn, actor, event)
    next_cursor = None
    if next_seq is not None:
        payload = {"k": "patient", "s": actor.scope, "p": str(patient_id), "q": next_seq}
        next_cursor = _sign(request, payload)
    items = [event_item(r) for r in rows]
    return JSONResponse({"items": items, "next_cursor": next_cursor, "archived_months": archived})


routes: list[BaseRoute] = [
    Route("/api/audit-events", list_audit_events, methods=["GET"]),
    Route("/api/audit-events/export", export_audit_events, methods=["GET"]),
    Route("/api/audit-events/verify", verify_audit_events, methods=["GET"]),
    Route("/api/patients/{patient_id:uuid}/access-report", patient_access_report, methods=["GET"]),
]


def routes_with(export_formats: Mapping[str, ExportFormat]) -> list[BaseRoute]:
    """`routes`, with the export offering `export_formats` too (app/main.py wires them)."""
    export = export_endpoint({**EXPORT_FORMATS, **export_formats})
    return [
        Route(route.path, export, methods=["GET"])
        if isinstance(route, Route) and route.endpoint is export_audit_events
        else route
        for route in routes
    ]
