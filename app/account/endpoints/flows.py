"""The five flows of seed 000: sign-up, sign-in, update profile, and profile + patients
(create patient lives with the other patient endpoints). Each handler reads like its
diagram: the token is verified by `requires`, then Auth0, then the database, then reply."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.account.profiles import (
    COUNT_PATIENTS,
    SELECT_REGISTRATION,
    Me,
    Profile,
    ProfileAndPatients,
    ProfileUpdate,
    Registration,
    note_sign_in,
    register,
    safe_profile,
)
from app.audit.record import Event, actor_from, record_event, record_independently, scope_of
from app.auth.requires import principal, requires
from app.core.db import transaction
from app.core.errors import AppError, ValidationFailed
from app.http.bodies import JSONResponse, parse_body
from app.http.context import context
from app.http.openapi import Resp, operation
from app.patients.search import read_page_audited

logger = logging.getLogger("app.flows")
NO_STORE = {"Cache-Control": "no-store"}


@operation(
    "Sign-up: register the caller with this service (idempotent)",
    tags=["flows"],
    responses={
        201: Resp(Registration, "Registered now"),
        200: Resp(Registration, "Already registered"),
    },
)
@requires()
async def create_registration(request: Request) -> Response:
    caller = principal(request)
    email = caller.claims.get("email")
    async with transaction(context(request).database) as conn:
        registered_at, created = await register(
            conn, caller.sub, email if isinstance(email, str) else None
        )
        if created:
            await record_event(
                conn,
                actor_from(request, caller),
                Event("user.registered", "C", entity_type="user", entity_id=caller.sub),
            )
    body = Registration(user_id=caller.sub, registered_at=registered_at)
    return JSONResponse(body, status_code=201 if created else 200, headers=NO_STORE)


@operation("Sign-in: the caller's stored data", tags=["flows"], responses={200: Me})
@requires()
async def get_me(request: Request) -> Response:
    caller = principal(request)
    async with transaction(context(request).database) as conn:
        if await note_sign_in(conn, caller) is not None:
            await record_event(
                conn,
                actor_from(request, caller),
                Event(
                    "user.signed_in",
                    "E",
                    entity_type="user",
                    entity_id=caller.sub,
                    detail={"amr": list(caller.amr)},
                ),
            )
        row = await conn.fetchrow(SELECT_REGISTRATION, caller.sub)
        count = await conn.fetchval(COUNT_PATIENTS, scope_of(caller))
    body = Me(
        user_id=caller.sub,
        registered=row is not None,
        registered_at=row["registered_at"] if row else None,
        last_seen_at=row["last_seen_at"] if row else None,
        patient_count=count,
        permissions=sorted(caller.permissions),
        org_id=caller.org_id,
    )
    return JSONResponse(body, headers=NO_STORE)


@operation(
    "Update profile: change allow-listed fields of the caller's Auth0 profile",
    tags=["flows"],
    body=ProfileUpdate,
    responses={
        200: Resp(Profile, "The updated profile"),
        502: Resp(None, "Auth0 answered something unexpected"),
    },
)
@requires()
async def update_profile(request: Request) -> Response:
    caller = principal(request)
    ctx = context(request)
    update = await parse_body(request, ProfileUpdate)
    fields = update.changed_fields()
    if not fields:
        raise ValidationFailed(
            "send at least one field to change",
            errors=[{"field": "body", "message": "no fields to update"}],
        )
    actor = actor_from(request, caller)
    try:
        user = await ctx.auth0.update_user(caller.sub, update.to_auth0())
    except AppError as error:
        await record_independently(
            ctx.database,
            actor,
            Event(
                "profile.updated",
                "U",
                outcome="failed",
                reason=f"auth0: {error.status}",
                entity_type="user",
                entity_id=caller.sub,
                detail={"fields": fields},
            ),
        )
        raise
    try:
        async with transaction(ctx.database) as conn:
            await record_event(
                conn,
                actor,
                Event(
                    "profile.updated",
                    "U",
                    entity_type="user",
                    entity_id=caller.sub,
                    detail={"fields": fields},
                ),
            )
    except Exception:
        # Auth0 has the change; the response must say so. Log all a reconciler needs.
        logger.critical(
            "profile updated in Auth0 but its audit event could not be written",
            extra={
                "request_id": actor.request_id,
                "user_id": caller.sub,
                "fields": fields,
                "action": "profile.updated",
            },
            exc_info=True,
        )
    return JSONResponse(safe_profile(user), headers=NO_STORE)


@operation(
    "Profile and patients: the caller's Auth0 profile and first page of patients",
    tags=["flows"],
    responses={200: ProfileAndPatients, 502: Resp(None, "Auth0 answered something unexpected")},
)
@requires()
async def get_profile(request: Request) -> Response:
    caller = principal(request)
    ctx = context(request)
    user = await ctx.auth0.get_user(caller.sub)
    page = await read_page_audited(
        ctx.database,
        ctx.audit,
        actor_from(request, caller),
        scope_of(caller),
        cursor_key=ctx.settings.derived_key("patient-cursor"),
        limit=20,
    )
    return JSONResponse({"profile": safe_profile(user), "patients": page}, headers=NO_STORE)


routes: list[BaseRoute] = [
    Route("/api/registrations", create_registration, methods=["POST"]),
    Route("/api/me", get_me, methods=["GET"]),
    Route("/api/profile", update_profile, methods=["PATCH"]),
    Route("/api/profile", get_profile, methods=["GET"]),
]
