"""HTTP handlers: the audit log as FHIR (`/fhir/AuditEvent`), the patients its events refer
to (`/fhir/Patient/{id}`), the `CapabilityStatement`, and the `fhir-ndjson` export format.

Like every read of the log, each search and read is recorded (`audit.read`, view `fhir`) in
the transaction that reads. Errors are raised as everywhere else; app/fhir/outcomes.py answers
them as `OperationOutcome`.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.audit.edge import actor_from
from app.audit.endpoints.log import ExportFormat
from app.audit.events import Actor, Event, scope_of
from app.audit.query import AuditFilters, RowEncoder, fetch_event, fetch_page
from app.audit.record import record_event
from app.audit.runtime import audit_of
from app.auth.requires import principal, requires
from app.core.db import transaction
from app.core.errors import BadRequest, NotFound
from app.fhir.bundle import Position, page_of, searchset
from app.fhir.capability import capability_statement
from app.fhir.mapping import AuditEventMapper, ResourceId
from app.fhir.outcomes import FHIR_JSON, FhirResponse
from app.fhir.patient import patient_resource
from app.fhir.schemas import (
    AuditEventSearchQuery,
    CapabilityStatement,
    FhirAuditEvent,
    FhirBundle,
    FhirPatient,
    OperationOutcome,
)
from app.fhir.search import CURSOR, AuditEventSearch, parse_search
from app.http.context import context
from app.http.cursors import open_cursor, sign_cursor
from app.http.openapi import Resp, operation
from app.http.ops import API_TITLE, API_VERSION
from app.patients import service
from app.patients.schemas import etag

TAGS = ["fhir"]
CURSOR_PURPOSE = "fhir-cursor"
FHIR_NDJSON = "application/fhir+ndjson"


def _outcomes(*statuses: int) -> dict[int, Resp]:
    """Every error a FHIR route may answer, documented as the `OperationOutcome` it is."""
    return {
        status: Resp(OperationOutcome, "An OperationOutcome", media_type=FHIR_JSON)
        for status in statuses
    }


_AUTHENTICATED = _outcomes(401, 403, 429, 500, 503)


def _base(request: Request) -> str:
    """The FHIR base URL of every link we write: from PUBLIC_URL, never from the request's
    Host (a forged one would send a client that follows `next` elsewhere, token and all).
    Outside `serve`, which requires PUBLIC_URL, links without it are relative."""
    return f"{context(request).settings.server.public_url or ''}/fhir"


def _mapper(request: Request) -> AuditEventMapper:
    settings = context(request).settings
    return AuditEventMapper(settings.auth0.issuer, settings.auth0.audience)


def _actor(request: Request) -> Actor:
    return actor_from(request, principal(request))


def _searched_event(filters: AuditFilters, returned: int) -> Event:
    """The `audit.read` a FHIR search of the log leaves: what was asked, never values."""
    detail = {
        "view": "fhir",
        "returned": returned,
        "since": filters.since.isoformat(),
        "until": filters.until.isoformat(),
        "filters": filters.used(),
    }
    return Event("audit.read", "R", patient_id=filters.patient_id, detail=detail)


def _bad_cursor(message: str) -> BadRequest:
    return BadRequest("the cursor is not valid", errors=[{"field": CURSOR, "message": message}])


def _binding(search: AuditEventSearch) -> dict[str, str]:
    """What a cursor is bound to: FHIR pages, of this scope, with these filters."""
    return {"k": "fhir", "s": search.filters.scope, "f": search.filters.fingerprint()}


def _start(request: Request, search: AuditEventSearch) -> Position | None:
    """The position a `_cursor` we signed for this scope and these filters names."""
    if search.cursor is None:
        return None
    key = context(request).settings.derived_key(CURSOR_PURPOSE)
    try:
        payload = open_cursor(key, search.cursor)
    except BadRequest:
        raise _bad_cursor("not a cursor from this server") from None
    if any(payload.get(name) != value for name, value in _binding(search).items()):
        raise _bad_cursor("the cursor was made for another search")
    position = Position.from_payload(payload)
    if position is None:
        raise _bad_cursor("not a cursor from this server")
    return position


def _sign(request: Request, search: AuditEventSearch, position: Position) -> str:
    key = context(request).settings.derived_key(CURSOR_PURPOSE)
    return sign_cursor(key, _binding(search) | position.payload())


@operation(
    "Search the audit log as FHIR AuditEvent resources (IHE BALP), newest first",
    tags=TAGS,
    query=AuditEventSearchQuery,
    responses={
        200: Resp(FhirBundle, "A Bundle (searchset)", media_type=FHIR_JSON),
        **_AUTHENTICATED,
        **_outcomes(400, 422),
    },
    description="One AuditEvent per patient per disclosure: a search event that showed 20 "
    "patients is 20 resources. Pages follow the Bundle's `next` link (an opaque `_cursor`). "
    "An unknown parameter or a bad value is a 400 OperationOutcome naming it. The search is "
    "itself recorded as an `audit.read` event.",
)
@requires("read:audit_events")
async def search_audit_events(request: Request) -> Response:
    actor = _actor(request)
    search = parse_search(request.query_params.multi_items(), actor.scope)
    start = _start(request, search)
    filters, count = search.filters, search.count
    rows: list[asyncpg.Record] = []
    more = None
    async with transaction(context(request).database) as conn:
        if not search.matches_nothing:
            after = start.after_key() if start is not None else None
            rows, more = await fetch_page(conn, filters, limit=count + 1, after=after)
        resources, next_position = page_of(
            rows,
            _mapper(request),
            count=count,
            start=start,
            only_patient=filters.patient_id,
            more=more is not None,
        )
        await record_event(conn, actor, _searched_event(filters, len(resources)))
    next_cursor = _sign(request, search, next_position) if next_position else None
    bundle = searchset(
        _base(request), resources, search.params, cursor=search.cursor, next_cursor=next_cursor
    )
    return FhirResponse(bundle)


@operation(
    "Read one FHIR AuditEvent",
    tags=TAGS,
    responses={
        200: Resp(FhirAuditEvent, "The AuditEvent", media_type=FHIR_JSON),
        **_AUTHENTICATED,
        **_outcomes(404),
    },
    description="The id is `{seq}-{patient id}` for an event that named patients (one "
    "resource each), else `{seq}`. The read is itself recorded as an `audit.read` event.",
)
@requires("read:audit_events")
async def read_audit_event(request: Request) -> Response:
    actor = _actor(request)
    resource_id = ResourceId.parse(request.path_params["id"])
    resource = None
    async with transaction(context(request).database) as conn:
        if resource_id is not None:
            row = await fetch_event(conn, actor.scope, resource_id.seq)
            if row is not None:
                wanted = str(resource_id)
                resources = _mapper(request).resources(row, resource_id.patient_id)
                resource = next((r for r in resources if r["id"] == wanted), None)
        event = Event(
            "audit.read",
            "R",
            entity_type="AuditEvent",
            entity_id=str(resource_id) if resource_id else None,
            patient_id=resource_id.patient_id if resource_id else None,
            detail={"view": "fhir", "returned": int(resource is not None)},
        )
        await record_event(conn, actor, event)
    if resource is None:
        raise NotFound("no such AuditEvent in the caller's scope")
    return FhirResponse(resource)


@operation(
    "Read one patient as a FHIR Patient",
    tags=[*TAGS, "patients"],
    responses={
        200: Resp(FhirPatient, "The patient", media_type=FHIR_JSON, headers=("ETag",)),
        **_AUTHENTICATED,
        **_outcomes(404, 410),
    },
    description="Scoped and recorded like `GET /api/patients/{patient_id}`.",
)
@requires("read:patients")
async def read_fhir_patient(request: Request) -> Response:
    ctx, found = context(request), principal(request)
    patient_id: UUID = request.path_params["patient_id"]
    actor = actor_from(request, found)
    row = await service.read_patient(
        ctx.database, audit_of(request).writer, actor, scope_of(found), patient_id
    )
    return FhirResponse(patient_resource(row), headers={"ETag": etag(row["version"])})


@operation(
    "The FHIR CapabilityStatement",
    tags=TAGS,
    responses={
        200: Resp(CapabilityStatement, "What this FHIR server offers", media_type=FHIR_JSON),
        **_outcomes(429, 500, 503),
    },
)
async def fhir_metadata(request: Request) -> Response:
    return FhirResponse(capability_statement(_base(request), API_TITLE, API_VERSION))


def _fhir_lines(request: Request, filters: AuditFilters) -> RowEncoder:
    """NDJSON of the resources of each batch; with a patient filter, only that patient's."""
    mapper = _mapper(request)

    def lines(rows: Sequence[asyncpg.Record]) -> bytes:
        return b"".join(
            orjson.dumps(resource) + b"\n"
            for row in rows
            for resource in mapper.resources(row, filters.patient_id)
        )

    return lines


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "fhir-ndjson": ExportFormat(FHIR_NDJSON, "fhir.ndjson", _fhir_lines),
}

routes: list[BaseRoute] = [
    Route("/fhir/metadata", fhir_metadata, methods=["GET"]),
    Route("/fhir/AuditEvent", search_audit_events, methods=["GET"]),
    Route("/fhir/AuditEvent/{id}", read_audit_event, methods=["GET"]),
    Route("/fhir/Patient/{patient_id:uuid}", read_fhir_patient, methods=["GET"]),
]
