"""HTTP handlers of the account flows of seed 000: sign-up, sign-in, update profile, and
profile + patients (create patient lives with the other patient endpoints). Each reads like
its diagram: `requires` verifies the token, one call to app/account/service.py talks to
Auth0 and the database, then the reply."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.account import service
from app.account.profiles import (
    Me,
    Profile,
    ProfileAndPatients,
    ProfileUpdate,
    Registration,
)
from app.account.runtime import account_of
from app.audit.edge import actor_from
from app.audit.runtime import audit_of
from app.auth.requires import principal, requires
from app.auth0.management import auth0_of
from app.http.bodies import JSONResponse, parse_body
from app.http.context import context
from app.http.openapi import Resp, operation

logger = logging.getLogger(__name__)
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
    actor = actor_from(request, caller)
    registered_at, created = await service.sign_up(context(request).database, actor, caller)
    body = Registration(user_id=caller.sub, registered_at=registered_at)
    return JSONResponse(body, status_code=201 if created else 200, headers=NO_STORE)


@operation("Sign-in: the caller's stored data", tags=["flows"], responses={200: Me})
@requires()
async def get_me(request: Request) -> Response:
    caller = principal(request)
    me = await service.sign_in(context(request).database, actor_from(request, caller), caller)
    return JSONResponse(me, headers=NO_STORE)


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
    actor = actor_from(request, caller)
    profile = await service.update_profile(
        ctx.database, auth0_of(request), account_of(request).profiles, actor, caller, update
    )
    return JSONResponse(profile, headers=NO_STORE)


@operation(
    "Profile and patients: the caller's Auth0 profile and first page of patients",
    tags=["flows"],
    responses={200: ProfileAndPatients, 502: Resp(None, "Auth0 answered something unexpected")},
)
@requires()
async def get_profile(request: Request) -> Response:
    caller = principal(request)
    ctx = context(request)
    profiles = account_of(request).profiles
    assert profiles is not None  # the lifespan gives every runtime its cache
    body, age = await service.profile_and_patients(
        ctx.database,
        audit_of(request).writer,
        profiles,
        actor_from(request, caller),
        caller,
        cursor_key=ctx.settings.derived_key("patient-cursor"),
    )
    return JSONResponse(body, headers={**NO_STORE, "Age": str(age)})


routes: list[BaseRoute] = [
    Route("/api/registrations", create_registration, methods=["POST"]),
    Route("/api/me", get_me, methods=["GET"]),
    Route("/api/profile", update_profile, methods=["PATCH"]),
    Route("/api/profile", get_profile, methods=["GET"]),
]
