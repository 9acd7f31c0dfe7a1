"""HTTP handlers: patients (API.md "Patients"; create is seed diagram 4).

Each handler: `requires` verifies the token, the handler parses the request, one call to
app/patients/service.py does the work and records it, then the reply. Every response
carries `Cache-Control: no-store`: these bodies are personal data.
"""

from __future__ import annotations

import functools
import re
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.audit.edge import actor_from
from app.audit.events import Actor, scope_of
from app.audit.runtime import audit_of
from app.auth.requires import Endpoint, principal, requires
from app.core.errors import AppError, BadRequest, PreconditionRequired
from app.core.state import Core
from app.http import idempotency
from app.http.bodies import JSONResponse, parse_body, parse_query
from app.http.context import context
from app.http.openapi import Problem, Resp, operation
from app.patients import service
from app.patients.runtime import patients_of
from app.patients.schemas import (
    PatientCreate,
    PatientOut,
    PatientPage,
    PatientPatch,
    PatientSearch,
    etag,
    patient_json,
)
from app.patients.search import PatientFilters, read_page_audited

CURSOR_PURPOSE = "patient-cursor"
_ETAG = re.compile(r'\s*(?:W/)?"([^"]*)"\s*')


def _problem(description: str) -> Resp:
    return Resp(Problem, description, media_type="application/problem+json")


def _no_store(endpoint: Endpoint) -> Endpoint:
    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            response = await endpoint(request)
        except AppError as error:
            error.headers.setdefault("Cache-Control", "no-store")
            raise
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return wrapper


def _if_match(request: Request, *, required: bool) -> int | None:
    """The version named by `If-Match: W/"<n>"`; 428 when required and absent."""
    values = request.headers.getlist("if-match")
    if not values:
        if required:
            raise PreconditionRequired(
                "send If-Match with the ETag you read, so no change is lost",
                errors=[{"field": "If-Match", "message": "required"}],
            )
        return None
    match = _ETAG.fullmatch(values[0]) if len(values) == 1 else None
    if match is None:
        # `*` and lists would let a write go through without naming what it replaces.
        raise BadRequest(
            "If-Match must be the one ETag of the version you read",
            errors=[{"field": "If-Match", "message": 'expected W/"<version>"'}],
        )
    tag = match.group(1)
    return int(tag) if tag.isdigit() and len(tag) < 10 else 0  # 0 matches no version


def _caller(request: Request) -> tuple[Core, str, Actor]:
    found = principal(request)
    return context(request), scope_of(found), actor_from(request, found)


@operation(
    "Search the caller's patients (name prefix, birth date, identifier)",
    tags=["patients"],
    query=PatientSearch,
    responses={200: Resp(PatientPage, "One page, newest first")},
    description="Each patient returned is recorded as a `patient.read` audit event.",
)
@requires("read:patients")
@_no_store
async def search_patients(request: Request) -> Response:
    query = parse_query(request, PatientSearch)
    ctx, scope, actor = _caller(request)
    filters = PatientFilters(query.name, query.birth_date, query.identifier_pair())
    page = await read_page_audited(
        ctx.database,
        audit_of(request).writer,
        actor,
        scope,
        cursor_key=ctx.settings.derived_key(CURSOR_PURPOSE),
        limit=query.limit,
        filters=filters,
        cursor=query.cursor,
        via="search",
    )
    return JSONResponse(page)


@operation(
    "Create a patient in the caller's scope",
    tags=["patients", "flows"],
    body=PatientCreate,
    responses={
        201: Resp(
            PatientOut,
            "Created (or the replay of the first response to this key)",
            headers=("Location", "ETag", "Idempotent-Replayed"),
        ),
        409: _problem("A live patient in this scope has this identifier (`existing_id`)"),
    },
    request_headers=[
        (
            "Idempotency-Key",
            False,
            "Replays the first response to this key for 24 h; another body with it is 422",
        ),
    ],
)
@requires("create:patients")
@_no_store
async def create(request: Request) -> Response:
    ctx, scope, actor = _caller(request)
    key = idempotency.key_from(request)
    body = await parse_body(request, PatientCreate)
    creates = patients_of(request).creates
    created = await service.create_patient(
        ctx.database, creates, actor, scope, body, idempotency_key=key
    )
    return JSONResponse(created.body, status_code=201, headers=created.headers)


@operation(
    "Read one patient",
    tags=["patients"],
    responses={
        200: Resp(PatientOut, "The patient", headers=("ETag",)),
        410: _problem("The patient was deleted"),
    },
)
@requires("read:patients")
@_no_store
async def get_one(request: Request) -> Response:
    ctx, scope, actor = _caller(request)
    patient_id: UUID = request.path_params["patient_id"]
    row = await service.read_patient(
        ctx.database, audit_of(request).writer, actor, scope, patient_id
    )
    return JSONResponse(patient_json(row), headers={"ETag": etag(row["version"])})


@operation(
    "Change some fields of a patient (null clears an optional field)",
    tags=["patients"],
    body=PatientPatch,
    responses={
        200: Resp(PatientOut, "The patient as it now is", headers=("ETag",)),
        409: _problem("Another live patient in this scope has this identifier"),
        410: _problem("The patient was deleted"),
        412: _problem("If-Match is not the current version (the current ETag is sent)"),
        428: _problem("If-Match is missing"),
    },
    request_headers=[("If-Match", True, 'The ETag of the version you read, W/"<version>"')],
)
@requires("update:patients")
@_no_store
async def update(request: Request) -> Response:
    ctx, scope, actor = _caller(request)
    patient_id: UUID = request.path_params["patient_id"]
    expected = _if_match(request, required=True) or 0
    changes = (await parse_body(request, PatientPatch)).changes()
    row = await service.update_patient(
        ctx.database, actor, scope, patient_id, changes, expected_version=expected
    )
    return JSONResponse(patient_json(row), headers={"ETag": etag(row["version"])})


@operation(
    "Delete a patient (soft: kept for the audit trail, gone from lists, identifier freed)",
    tags=["patients"],
    responses={
        204: Resp(None, "Deleted"),
        400: _problem("If-Match is not a single ETag"),
        410: _problem("Already deleted"),
        412: _problem("If-Match was sent and is not the current version"),
    },
    request_headers=[("If-Match", False, "Delete only if this is still the current version")],
)
@requires("delete:patients")
@_no_store
async def delete(request: Request) -> Response:
    ctx, scope, actor = _caller(request)
    patient_id: UUID = request.path_params["patient_id"]
    expected = _if_match(request, required=False)
    await service.delete_patient(ctx.database, actor, scope, patient_id, expected_version=expected)
    return Response(status_code=204)


routes: list[BaseRoute] = [
    Route("/api/patients", search_patients, methods=["GET"]),
    Route("/api/patients", create, methods=["POST"], name="create_patient"),
    Route("/api/patients/{patient_id:uuid}", get_one, methods=["GET"], name="get_patient"),
    Route("/api/patients/{patient_id:uuid}", update, methods=["PATCH"], name="update_patient"),
    Route("/api/patients/{patient_id:uuid}", delete, methods=["DELETE"], name="delete_patient"),
]
