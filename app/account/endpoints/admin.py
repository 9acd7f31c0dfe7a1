"""Admin endpoints: a user's Auth0 roles (seed 002 "User Role Assignment").

Roles: the admin is the actor, the user the entity, in every event, denials included, with
the role ids the attempt named. An admin whose token carries `org_id` administers that
organization's member roles only: a user outside it gets 404, exactly as a user that does
not exist (no membership leak), recorded as denied. Changing one's own roles, or a role
outside ASSIGNABLE_ROLES, is 403 (app/account/roles.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, cast

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.account.roles import (
    MAX_ROLES,
    RolesChange,
    UserRoles,
    change_roles,
    check_change,
    is_user_id,
    user_roles,
)
from app.audit.edge import actor_from, record_failure
from app.audit.events import Crud, Event
from app.audit.record import record_independently
from app.auth.requires import AuthRequirement, Endpoint, authenticate, check_requirement, principal
from app.auth.tokens import Principal
from app.auth0.management import auth0_of
from app.core.errors import AppError, Forbidden, NotFound, ValidationFailed
from app.core.settings.account import ROLE_ID
from app.http.bodies import JSONResponse, parse_body, read_json
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
                check_requirement(caller, requirement, context(request).settings.auth)
            except Forbidden as error:
                roles = await _attempted_roles(request) if crud == "U" else None
                event = Event(
                    action,
                    crud,
                    "denied",
                    reason=error.detail,
                    entity_type="user",
                    entity_id=_target(request),
                    detail={"roles": roles} if roles else {},
                )
                await _record_quietly(request, caller, event)
                raise
            return await endpoint(request)

        cast(Any, wrapper).__auth__ = requirement
        return wrapper

    return decorator


async def _attempted_roles(request: Request) -> list[str] | None:
    """The role ids a refused change named, for its audit record: only strings shaped like
    role ids, at most as many as a change may carry; None when the body says nothing usable."""
    try:
        body = await read_json(request)
    except AppError:
        return None
    roles = body.get("roles") if isinstance(body, dict) else None
    if not isinstance(roles, list):
        return None
    ids = [r for r in roles if isinstance(r, str) and ROLE_ID.fullmatch(r)]
    return list(dict.fromkeys(ids))[:MAX_ROLES] or None


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
        member = await auth0_of(request).is_org_member(caller.org_id, user_id)
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
        body = await user_roles(auth0_of(request), user_id, org_id=caller.org_id)
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
    try:
        check_change(caller.sub, user_id, change.roles, ctx.settings.account.assignable_roles)
    except Forbidden as error:
        denied = Event(
            action,
            "U",
            "denied",
            reason=error.detail,
            entity_type="user",
            entity_id=user_id,
            detail=event.detail,
        )
        await _record_quietly(request, caller, denied)
        raise
    await check_same_org(request, caller, user_id, event)
    try:
        await change_roles(
            auth0_of(request),
            user_id,
            change.roles,
            assign=action == "user.roles.assigned",
            org_id=caller.org_id,
        )
    except AppError as error:
        await record_failure(request, caller, event, error)
        raise
    await record_independently(ctx.database, actor_from(request, caller), event)
    return Response(status_code=204, headers=NO_STORE)


_CHANGE_RESPONSES: dict[int, Resp | type[BaseModel] | None] = {
    204: Resp(None, "Done"),
    403: _problem(
        "Missing update:users, the caller's own roles, or a role outside ASSIGNABLE_ROLES"
    ),
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


routes: list[BaseRoute] = [
    Route("/api/admin/users/{user_id}/roles", get_roles, methods=["GET"]),
    Route("/api/admin/users/{user_id}/roles", assign_roles, methods=["POST"]),
    Route("/api/admin/users/{user_id}/roles", remove_roles, methods=["DELETE"]),
]
