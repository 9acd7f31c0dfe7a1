"""The organisation admin's operations in the console: the organisation's members, one
member's roles, sign-ins and live sessions, and ending one of those sessions. Everything is
within the caller's organisation: a user outside it is "not found". Reads of a member are
recorded as the API's role reads are (`user.roles.read`); a session ended here is recorded
with the admin as who ended it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from databases import Database

from app.account.history import HISTORY_ACTIONS
from app.account.roles import user_roles
from app.audit.batcher import AuditWriter
from app.audit.events import Actor, Event
from app.auth0.management import Auth0Client
from app.console import repository
from app.core.db import connection
from app.session import endings
from app.session.runtime import SessionRuntime

MEMBERS_SHOWN = 500
SIGN_INS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    roles: list[dict[str, Any]]
    sign_ins: list[asyncpg.Record]
    sessions: list[asyncpg.Record]


async def members(
    auth0: Auth0Client, writer: AuditWriter, actor: Actor, org_id: str
) -> list[dict[str, Any]]:
    """The organisation's members (at most MEMBERS_SHOWN), recorded as a read."""
    found = await auth0.list_org_members(org_id, limit=MEMBERS_SHOWN)
    event = Event(
        "org.members.read", "R", entity_type="organization", entity_id=org_id,
        detail={"view": "console.members", "returned": len(found)},
    )  # fmt: skip
    await writer.record(actor, [event])
    return found


async def member(
    database: Database,
    auth0: Auth0Client,
    sessions: SessionRuntime,
    writer: AuditWriter,
    actor: Actor,
    org_id: str,
    user_id: str,
) -> Member | None:
    """One member's roles in the organisation, latest sign-ins and live sessions in its
    scope; None when the user is not a member."""
    if not await auth0.is_org_member(org_id, user_id):
        return None
    roles = (await user_roles(auth0, user_id, org_id=org_id))["roles"]
    async with connection(database) as conn:
        signed = await repository.sign_ins(
            conn, user_id, actor.scope, list(HISTORY_ACTIONS), SIGN_INS_SHOWN
        )
    live = await endings.of_user(sessions, user_id, actor.scope)
    event = Event(
        "user.roles.read", "R", entity_type="user", entity_id=user_id,
        detail={"view": "console.member"},
    )  # fmt: skip
    await writer.record(actor, [event])
    return Member(user_id, roles, signed, live)


async def end_session(
    sessions: SessionRuntime, actor: Actor, user_id: str, session_id: uuid.UUID
) -> bool:
    """End the member's session in the caller's scope; False when there is no such one."""
    return await endings.end_for(sessions, session_id, actor, sub=user_id) is not None
