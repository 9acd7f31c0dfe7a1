"""HTTP handlers: patients (API.md "Patients"; create is seed diagram 4).

Each handler: the token is verified by `requires`, then one transaction does the work and
writes its audit event last, then the reply. An attempt on a patient outside the caller's
scope (404), a deleted one (410), a stale version (412) or a duplicate identifier (409) is
recorded on a connection of its own, so the rollback cannot erase it. Every response carries
`Cache-Control: no-store`: these bodies are personal data.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from typing import Any
from uuid import UUID, uuid4

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.audit.record import Actor, actor_from, prepare, record_event, scope_of
from app.auth.requires import Endpoint, principal, requires
from app.core.db import connection, transaction
from app.core.errors import AppError, BadRequest, PreconditionRequired
from app.core.state import AppContext
from app.http import idempotency
from app.http.bodies import JSONResponse, parse_body, parse_query
from app.http.context import context
from app.http.openapi import Problem, Resp, operation
from app.patients.events import (
    created_event,
    patient_event,
    read_event,
    refusal_event,
    refusals_recorded,
)
from app.patients.repository import (
    DuplicateIdentifier,
    create_patient,
    create_patient_recorded,
    delete_patient,
    etag,
    patient_json,
    read_patient,
    update_patient,
)
from app.patients.schemas import PatientCreate, PatientOut, PatientPage, PatientPatch, PatientSearch
from app.patients.search import PatientFilters, read_page_audited

logger = logging.getLogger("app.patients.repository")

CURSOR_PURPOSE = "patient-cursor"
_ETAG = re.compile(r'\s*(?:W/)?"([^"]*)"\s*')
# About one create in a hundred also clears expired idempotency keys.
_PURGE_CHANCE = 0.01


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


def _caller(request: Request) -> tuple[AppContext, str, Actor, str]:
    found = principal(request)
    return context(request), scope_of(found), actor_from(request, found), found.sub


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
    ctx, scope, actor, _ = _caller(request)
    filters = PatientFilters(query.name, query.birth_date, query.identifier_pair())
    page = await read_page_audited(
        ctx.database,
        ctx.audit,
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
    ctx, scope, actor, sub = _caller(request)
    key = idempotency.key_from(request)
    body = await parse_body(request, PatientCreate)
    fields = body.fields()
    request_hash = idempotency.fingerprint(
        "POST /api/patients", scope, body.model_dump(mode="json")
    )
    if key is None:  # the usual case: one statement, its own transaction
        patient_id = uuid4()
        event = created_event(patient_id, fields)
        async with connection(ctx.database) as conn:
            row = await create_patient_recorded(
                conn, patient_id, scope, sub, fields, prepare(actor, [event])
            )
        if row is not None:
            headers = {"Location": f"/api/patients/{row['id']}", "ETag": etag(row["version"])}
            return JSONResponse(patient_json(row), status_code=201, headers=headers)
        # The identifier is taken (or was, a moment ago): the full path below finds out,
        # answers 409 and records the refusal.
    refusal: DuplicateIdentifier | None = None
    async with transaction(ctx.database) as conn:
        if key is not None:
            stored = await idempotency.claim(conn, sub, key, request_hash)
            if stored is not None:
                return await _replay(conn, actor, stored)
        try:
            row = await create_patient(conn, scope, sub, fields)
        except DuplicateIdentifier as duplicate:
            refusal = duplicate
            existing = {"existing_id": duplicate.extra["existing_id"]}
            result = idempotency.StoredResponse(409, existing)
            event = refusal_event("patient.created", "C", duplicate.existing_id, duplicate)
        else:
            headers = {"Location": f"/api/patients/{row['id']}", "ETag": etag(row["version"])}
            result = idempotency.StoredResponse(201, patient_json(row), headers)
            event = created_event(row["id"], fields)
        if key is not None:
            await idempotency.complete(conn, sub, key, result)
        await record_event(conn, actor, event)  # last: it holds the scope's chain until commit
    if key is not None and random.random() < _PURGE_CHANCE:  # noqa: S311 (not security)
        await _purge(ctx)
    if refusal is not None:
        raise refusal
    return JSONResponse(result.body, status_code=201, headers=result.headers)


async def _replay(conn: Any, actor: Actor, stored: idempotency.StoredResponse) -> Response:
    replayed = {"Idempotent-Replayed": "true"}
    if stored.status == 409:
        existing = stored.body.get("existing_id")
        raise DuplicateIdentifier(UUID(existing) if existing else None, headers=replayed)
    # The replay shows the patient again: a read, recorded before it is sent.
    await record_event(conn, actor, read_event(UUID(stored.body["id"]), "idempotent_replay"))
    return JSONResponse(stored.body, status_code=stored.status, headers=stored.headers | replayed)


async def _purge(ctx: AppContext) -> None:
    try:
        async with connection(ctx.database) as conn:
            await idempotency.purge_expired(conn)
    except Exception:
        logger.warning("purging expired idempotency keys failed", exc_info=True)


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
    ctx, scope, actor, _ = _caller(request)
    patient_id: UUID = request.path_params["patient_id"]
    async with refusals_recorded(ctx.database, actor, "patient.read", "R", patient_id):
        async with connection(ctx.database) as conn:
            row = await read_patient(conn, scope, patient_id)
        await ctx.audit.record(actor, [read_event(patient_id, "get")])
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
    ctx, scope, actor, sub = _caller(request)
    patient_id: UUID = request.path_params["patient_id"]
    expected = _if_match(request, required=True) or 0
    changes = (await parse_body(request, PatientPatch)).changes()
    async with (
        refusals_recorded(ctx.database, actor, "patient.updated", "U", patient_id),
        transaction(ctx.database) as conn,
    ):
        row, changed = await update_patient(
            conn,
            scope,
            patient_id,
            changes,
            expected_version=expected,
            changed_by=sub,
            request_id=actor.request_id,
        )
        detail = {"fields": changed, "version": row["version"]}
        await record_event(
            conn, actor, patient_event("patient.updated", "U", patient_id, detail=detail)
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
    ctx, scope, actor, sub = _caller(request)
    patient_id: UUID = request.path_params["patient_id"]
    expected = _if_match(request, required=False)
    async with (
        refusals_recorded(ctx.database, actor, "patient.deleted", "D", patient_id),
        transaction(ctx.database) as conn,
    ):
        row = await delete_patient(
            conn,
            scope,
            patient_id,
            expected_version=expected,
            deleted_by=sub,
            request_id=actor.request_id,
        )
        detail = {"version": row["version"]}
        await record_event(
            conn, actor, patient_event("patient.deleted", "D", patient_id, detail=detail)
        )
    return Response(status_code=204)


routes: list[BaseRoute] = [
    Route("/api/patients", search_patients, methods=["GET"]),
    Route("/api/patients", create, methods=["POST"], name="create_patient"),
    Route("/api/patients/{patient_id:uuid}", get_one, methods=["GET"], name="get_patient"),
    Route("/api/patients/{patient_id:uuid}", update, methods=["PATCH"], name="update_patient"),
    Route("/api/patients/{patient_id:uuid}", delete, methods=["DELETE"], name="delete_patient"),
]
