"""Admin endpoints: a user's Auth0 roles (seed 002 "User Role Assignment"), and the Auth0
Log Streams webhook that feeds sign-in history into the audit log.

Roles: the admin is the actor, the user the entity, in every event, denials included. An
admin whose token carries `org_id` administers that organization only: a user outside it
gets 404, exactly as a user that does not exist (no membership leak), recorded as denied.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Callable
from typing import Any, cast

from pydantic import BaseModel, SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.account.logstream import MalformedBatch, ingest, parse_batch, validate_records
from app.account.roles import RolesChange, UserRoles, change_roles, is_user_id, user_roles
from app.account.services import EMAIL_HASH_KEY, email_hash
from app.audit.events import Crud, Event
from app.audit.http import actor_from, record_failure
from app.audit.record import record_independently
from app.auth.requires import AuthRequirement, Endpoint, authenticate, check_requirement, principal
from app.auth.tokens import Principal
from app.core.errors import (
    AppError,
    BadRequest,
    Forbidden,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from app.http.bodies import JSONResponse, parse_body
from app.http.context import context
from app.http.openapi import Problem, Resp, operation

logger = logging.getLogger(__name__)
NO_STORE = {"Cache-Control": "no-store"}


def _problem(description: str) -> Resp:
    return Resp(Problem, description, media_type="application/problem+json")


# --- Roles ---------------------------------------------------------------------------------


def _target(request: Request) -> str:
    return str(request.path_params.get("user_id", ""))[:255]


async def _record_quietly(request: Request, caller: Principal, event: Event) -> None:
    """Record on a connection of its own; a failure to record must not hide the answer."""
    try:
        await record_independently(context(request).database, actor_from(request, caller), event)
    except Exception:
        logger.exception("recording an admin event failed")


def requires_audited(permission: str, action: str, crud: Crud) -> Callable[[Endpoint], Endpoint]:
    """`requires(permission)` that records a refusal as `action` denied, with the target
    user as entity (the generic denial hook knows the route, not the user)."""
    requirement = AuthRequirement((permission,))

    def decorator(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapper(request: Request) -> Response:
            caller = await authenticate(request, AuthRequirement())
            try:
                check_requirement(caller, requirement, context(request).settings)
            except Forbidden as error:
                event = Event(
                    action,
                    crud,
                    "denied",
                    reason=error.detail,
                    entity_type="user",
                    entity_id=_target(request),
                )
                await _record_quietly(request, caller, event)
                raise
            return await endpoint(request)

        cast(Any, wrapper).__auth__ = requirement
        return wrapper

    return decorator


def user_id_of(request: Request) -> str:
    user_id = str(request.path_params["user_id"])
    if not is_user_id(user_id):
        raise ValidationFailed(
            "the user id is not an Auth0 user id",
            errors=[{"field": "user_id", "message": "expected an Auth0 user id like auth0|…"}],
        )
    return user_id


async def check_same_org(request: Request, caller: Principal, user_id: str, event: Event) -> None:
    """An org admin acts on members of the org only; anyone else is "not found"."""
    if caller.org_id is None:
        return
    try:
        member = await context(request).auth0.is_org_member(caller.org_id, user_id)
    except AppError as error:
        await record_failure(request, caller, event, error)
        raise
    if not member:
        denied = Event(
            event.action,
            event.crud,
            "denied",
            reason="user outside the caller's organization",
            entity_type="user",
            entity_id=user_id,
            detail=event.detail,
        )
        await _record_quietly(request, caller, denied)
        raise NotFound("no such user in your organization")


@operation(
    "A user's Auth0 roles",
    tags=["admin"],
    responses={
        200: UserRoles,
        422: _problem("The user id is not an Auth0 user id"),
        502: _problem("Auth0 answered something unexpected"),
    },
)
@requires_audited("read:users", "user.roles.read", "R")
async def get_roles(request: Request) -> Response:
    caller = principal(request)
    ctx = context(request)
    user_id = user_id_of(request)
    event = Event("user.roles.read", "R", entity_type="user", entity_id=user_id)
    await check_same_org(request, caller, user_id, event)
    try:
        body = await user_roles(ctx.auth0, user_id)
    except AppError as error:
        await record_failure(request, caller, event, error)
        raise
    await record_independently(ctx.database, actor_from(request, caller), event)
    return JSONResponse(body, headers=NO_STORE)


async def _change_roles(request: Request, action: str) -> Response:
    caller = principal(request)
    ctx = context(request)
    user_id = user_id_of(request)
    change = await parse_body(request, RolesChange)
    event = Event(
        action, "U", entity_type="user", entity_id=user_id, detail={"roles": change.roles}
    )
    await check_same_org(request, caller, user_id, event)
    try:
        await change_roles(ctx.auth0, user_id, change.roles, assign=action == "user.roles.assigned")
    except AppError as error:
        await record_failure(request, caller, event, error)
        raise
    await record_independently(ctx.database, actor_from(request, caller), event)
    return Response(status_code=204, headers=NO_STORE)


_CHANGE_RESPONSES: dict[int, Resp | type[BaseModel] | None] = {
    204: Resp(None, "Done"),
    502: _problem("Auth0 answered something unexpected"),
}


@operation(
    "Assign Auth0 roles to a user", tags=["admin"], body=RolesChange, responses=_CHANGE_RESPONSES
)
@requires_audited("update:users", "user.roles.assigned", "U")
async def assign_roles(request: Request) -> Response:
    return await _change_roles(request, "user.roles.assigned")


@operation(
    "Remove Auth0 roles from a user", tags=["admin"], body=RolesChange, responses=_CHANGE_RESPONSES
)
@requires_audited("update:users", "user.roles.removed", "U")
async def remove_roles(request: Request) -> Response:
    return await _change_roles(request, "user.roles.removed")


# --- Auth0 Log Streams webhook --------------------------------------------------------------


def secret_matches(values: list[str], secret: SecretStr | None) -> bool:
    """The `Authorization` header against the stream's token, in constant time. Auth0 sends
    the configured value verbatim; `Bearer <token>` is accepted too."""
    if secret is None or len(values) != 1:
        return False
    expected = secret.get_secret_value().encode()
    given = values[0].strip().encode()
    scheme, _, rest = given.partition(b" ")
    bare = hmac.compare_digest(given, expected)
    bearer = hmac.compare_digest(rest.strip(), expected) and scheme.lower() == b"bearer"
    return bare or bearer


class Rejection(BaseModel):
    index: int
    log_id: str | None
    errors: list[dict[str, str]]


class IngestReport(BaseModel):
    received: int
    stored: int
    duplicates: int
    rejected: list[Rejection]


@operation(
    "Auth0 Log Streams webhook: ingest logs into the audit log (idempotent by log_id)",
    tags=["admin"],
    security="logStreamToken",
    responses={
        200: Resp(IngestReport, "Every record stored or already known"),
        207: Resp(IngestReport, "Some records rejected (see `rejected`); the rest stored"),
        400: _problem("Not a JSON array, JSON object or JSON lines; nothing stored"),
        413: _problem("Body over the size limit"),
    },
    description="Accepts Auth0's JSON array, JSON object and JSON lines formats, whatever "
    "the Content-Type. A record without a usable `log_id`, `data.type` or `data.date` is "
    "rejected and reported by its index; 2xx either way, so Auth0 does not resend records "
    "that can never be stored.",
)
async def log_stream(request: Request) -> Response:
    ctx = context(request)
    if not secret_matches(
        request.headers.getlist("authorization"), ctx.settings.auth0_log_stream_token
    ):
        # Not audited: unauthenticated traffic must not be able to write to the audit log.
        logger.warning("log stream delivery refused: bad or missing secret")
        raise Unauthorized("the log stream secret is missing or wrong", realm="log-stream")
    try:
        items = parse_batch(await request.body())
    except MalformedBatch as exc:
        raise BadRequest(
            "the batch is malformed", errors=[{"field": "body", "message": str(exc)}]
        ) from None
    valid, rejected = validate_records(items)
    key = ctx.settings.derived_key(EMAIL_HASH_KEY)
    stored, duplicates = await ingest(
        ctx.database,
        valid,
        request_id=getattr(request.state, "request_id", None),
        hash_user_name=lambda name: email_hash(key, name),
    )
    body = {
        "received": len(items),
        "stored": stored,
        "duplicates": duplicates,
        "rejected": [{"index": r.index, "log_id": r.log_id, "errors": r.errors} for r in rejected],
    }
    return JSONResponse(body, status_code=207 if rejected else 200)


routes: list[BaseRoute] = [
    Route("/api/admin/users/{user_id}/roles", get_roles, methods=["GET"]),
    Route("/api/admin/users/{user_id}/roles", assign_roles, methods=["POST"]),
    Route("/api/admin/users/{user_id}/roles", remove_roles, methods=["DELETE"]),
    Route("/hooks/auth0/log-stream", log_stream, methods=["POST"]),
]
