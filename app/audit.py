"""The audit log (interim implementation; issue 5 replaces the internals, keeping the API).

`record_event` writes inside the caller's transaction, so a change and its record commit
together. `record_independently` uses a connection of its own, so a denied or failed request
is recorded even when the request's transaction rolls back.
"""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import orjson
from databases import Database
from starlette.requests import Request

from app.db import transaction
from app.tokens import Principal

Crud = Literal["C", "R", "U", "D", "E"]
Outcome = Literal["success", "denied", "failed"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted and from where: the same for every event of one request."""

    scope: str
    sub: str | None = None
    client_id: str | None = None
    session_id: str | None = None
    token_id: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """What happened. `detail` holds names and codes, never patient values."""

    action: str
    crud: Crud
    outcome: Outcome = "success"
    reason: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    patient_id: uuid.UUID | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


def scope_of(principal: Principal) -> str:
    """A token's data scope: its organisation when it has one, else its user."""
    return f"org:{principal.org_id}" if principal.org_id else f"user:{principal.sub}"


def actor_from(request: Request, principal: Principal | None, *, scope: str | None = None) -> Actor:
    client = request.client
    return Actor(
        scope=scope or (scope_of(principal) if principal else "anonymous"),
        sub=principal.sub if principal else None,
        client_id=principal.client_id if principal else None,
        session_id=principal.sid if principal else None,
        token_id=principal.jti if principal else None,
        source_ip=client.host if client else None,
        user_agent=(request.headers.get("user-agent") or "")[:512] or None,
        request_id=request.state.request_id if hasattr(request.state, "request_id") else None,
    )


_INSERT = """
INSERT INTO audit_events (scope, actor, client_id, session_id, token_id, source_ip, user_agent,
    action, crud, outcome, outcome_reason, entity_type, entity_id, patient_id, request_id,
    detail, prev_hash, hash)
SELECT $1, $2, $3, $4, $5, $6::inet, $7, e.action, e.crud, e.outcome, e.reason, e.entity_type,
    e.entity_id, e.patient_id, $8, e.detail, NULL, e.hash
FROM unnest($9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
            $15::uuid[], $16::jsonb[], $17::bytea[])
    AS e(action, crud, outcome, reason, entity_type, entity_id, patient_id, detail, hash)
"""


def _ip(value: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


async def record_events(conn: asyncpg.Connection, actor: Actor, events: Sequence[Event]) -> None:
    """Append events in one statement, inside the caller's transaction."""
    if not events:
        return
    details = [orjson.dumps(dict(e.detail)).decode() for e in events]
    hashes = [
        hashlib.sha256(f"{actor.scope}|{e.action}|{d}".encode()).digest()
        for e, d in zip(events, details, strict=True)
    ]
    await conn.execute(
        _INSERT,
        actor.scope,
        actor.sub,
        actor.client_id,
        actor.session_id,
        actor.token_id,
        _ip(actor.source_ip),
        actor.user_agent,
        actor.request_id,
        [e.action for e in events],
        [e.crud for e in events],
        [e.outcome for e in events],
        [e.reason for e in events],
        [e.entity_type for e in events],
        [e.entity_id for e in events],
        [e.patient_id for e in events],
        details,
        hashes,
    )


async def record_event(conn: asyncpg.Connection, actor: Actor, event: Event) -> None:
    await record_events(conn, actor, [event])


async def record_independently(database: Database, actor: Actor, event: Event) -> None:
    """Record on a connection of its own (denied and failed requests)."""
    async with transaction(database) as conn:
        await record_event(conn, actor, event)
