"""The console's pages for organisation admins: the members, one member (roles, sign-ins,
live sessions), and the changes the member page's script sends (POST with X-CSRF: 1):
granting and revoking roles (the API's own handlers, so the same rules and records: no
self-grant, ASSIGNABLE_ROLES only, the organisation's members only), and ending a session.
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response

from app.account.endpoints.admin import assign_roles, remove_roles
from app.account.roles import is_user_id
from app.audit.runtime import audit_of
from app.auth0.management import auth0_of
from app.console import members
from app.console.edge import page, render, viewer
from app.core.errors import NotFound
from app.http.context import context
from app.session.runtime import sessions_of

READ = "read:users"
UPDATE = "update:users"
NO_ORG = "This page is for organisation admins: sign in through your organisation."


def _outside(request: Request) -> Response:
    return render(
        request, "forbidden.html", {"title": "Not allowed", "message": NO_ORG}, status=403
    )


@page(READ)
async def member_list(request: Request) -> Response:
    who = viewer(request)
    org_id = who.principal.org_id
    if org_id is None:
        return _outside(request)
    found = await members.members(auth0_of(request), audit_of(request).writer, who.actor, org_id)
    return render(request, "members.html", {"title": "Members", "members": found})


@page(READ)
async def member_page(request: Request) -> Response:
    who = viewer(request)
    org_id = who.principal.org_id
    if org_id is None:
        return _outside(request)
    user_id = str(request.path_params["user_id"])
    shown = None
    if is_user_id(user_id):
        shown = await members.member(
            context(request).database,
            auth0_of(request),
            sessions_of(request),
            audit_of(request).writer,
            who.actor,
            org_id,
            user_id,
        )
    if shown is None:
        return render(request, "missing.html", {"title": "No such member"}, status=404)
    values = {
        "title": f"Member {user_id}",
        "member": shown,
        "assignable": context(request).settings.account.assignable_roles,
        "may_change": who.can(UPDATE) and user_id != who.principal.sub,
        "may_end": who.can(UPDATE),
        "current_session": who.session.id,
    }
    return render(request, "member.html", values)


@page(UPDATE)
async def end_member_session(request: Request) -> Response:
    """End one of a member's sessions: 204, or a 404 problem when there is no such one."""
    who = viewer(request)
    user_id = str(request.path_params["user_id"])
    session_id: uuid.UUID = request.path_params["session_id"]
    if who.principal.org_id is None or not await members.end_session(
        sessions_of(request), who.actor, user_id, session_id
    ):
        raise NotFound("no such session of that member in your organisation")
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


async def grant_roles(request: Request) -> Response:
    """POST {roles}: the API's assign handler (its permission, rules and records)."""
    return await assign_roles(request)


async def revoke_roles(request: Request) -> Response:
    """POST {roles}: the API's remove handler (its permission, rules and records)."""
    return await remove_roles(request)
