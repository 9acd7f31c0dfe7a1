"""The audit log: who did what to which record, when, from where, with what outcome.

`record_event` writes inside the caller's transaction, so a change and its record commit
together. `record_independently` (and `record_denial`, `record_failure` built on it) uses a
connection of its own, so a denied or failed request is recorded even when the request's
transaction rolls back. `app.audit.chain` defines the hash chain and verifies it;
`app.audit.query` reads, pages and exports (`app.audit.schemas`: the shapes clients see).

Each write takes its scope's chain lock before it takes seq numbers and holds it until its
transaction ends (migrations/0002_audit.sql), so writers in one scope queue while writers
in other scopes proceed. Record events last in a transaction: the lock is held from the
record to the commit. For the same reason, record a failure (`record_failure`) only after
the request's own transaction has ended, or it waits for a lock its own request holds.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from asyncpg.pgproto.pgproto import UUID as FastUUID
from databases import Database
from starlette.requests import Request

from app.audit.chain import DigestEncoder, canonical_detail
from app.auth.tokens import Principal
from app.core.db import transaction
from app.core.errors import AppError

logger = logging.getLogger("app.audit.record")

Crud = Literal["C", "R", "U", "D", "E"]
Outcome = Literal["success", "denied", "failed"]

ACTION_PATTERN = re.compile(r"[a-z_]+(\.[a-z_]+)+")
MAX_DETAIL_BYTES = 4096
_CRUD = frozenset("CRUDE")
_OUTCOMES = frozenset({"success", "denied", "failed"})
_CRUD_OF_METHOD: dict[str, Crud] = {
    "GET": "R",
    "HEAD": "R",
    "POST": "C",
    "PUT": "U",
    "PATCH": "U",
    "DELETE": "D",
}


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
    """What happened. `detail` holds names and codes, never patient values.

    `occurred_at` (timezone-aware) defaults to the application's clock when it is recorded;
    `recorded_at` is always the database's clock at the write.
    """

    action: str
    crud: Crud
    outcome: Outcome = "success"
    reason: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    patient_id: uuid.UUID | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None


def scope_of(principal: Principal) -> str:
    """A token's data scope: its organisation when it has one, else its user."""
    return f"org:{principal.org_id}" if principal.org_id else f"user:{principal.sub}"


def actor_from(request: Request, principal: Principal | None, *, scope: str | None = None) -> Actor:
    """The actor of a request: the verified caller (if any), its address and user agent."""
    client = request.client
    return Actor(
        scope=scope or (scope_of(principal) if principal else "anonymous"),
        sub=principal.sub if principal else None,
        client_id=principal.client_id if principal else None,
        session_id=principal.sid if principal else None,
        token_id=principal.jti if principal else None,
        source_ip=client.host if client else None,
        user_agent=request.headers.get("user-agent") or None,
        request_id=getattr(request.state, "request_id", None),
    )


# --- Writing ----------------------------------------------------------------------------

# One round trip: the function (migrations/0002_audit.sql) locks the scope's chain, takes
# the seq numbers and the recording time, links the content digests and inserts the batch.
_APPEND = """
SELECT audit_events_append($1, $2, $3, $4, $5, $6, $7, $8, $9::uuid[], $10::timestamptz[],
    $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
    $17::uuid[], $18::jsonb[], $19::bytea[])
"""
_APPEND_ONE = """
SELECT audit_events_append_one($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
    $15, $16, $17, $18::jsonb, $19)
"""


def _text(value: str | None, limit: int | None = None) -> str | None:
    """Text Postgres accepts (no NUL) within the column's length limit."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value[:limit] if limit is not None else value


@functools.lru_cache(maxsize=4096)  # parsing costs more than the rest of a record
def _ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value) if value else None
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)  # the service records a few dozen distinct kinds
def _check_kind(action: str, crud: str, outcome: str) -> None:
    if not ACTION_PATTERN.fullmatch(action):
        raise ValueError(f"invalid audit action code {action!r}")
    if crud not in _CRUD or outcome not in _OUTCOMES:
        raise ValueError("invalid audit crud letter or outcome")


def _check(event: Event) -> None:
    _check_kind(event.action, event.crud, event.outcome)
    if event.occurred_at is not None and event.occurred_at.tzinfo is None:
        raise ValueError("audit occurred_at must be timezone-aware")


# The columns of one event (`Prepared.rows`), in the order the append functions take them;
# an actor's (`Prepared.common`) are ACTOR_COLUMNS.
PER_EVENT_COLUMNS = (
    "id",
    "occurred_at",
    "action",
    "crud",
    "outcome",
    "outcome_reason",
    "entity_type",
    "entity_id",
    "patient_id",
)


ACTOR_COLUMNS = (
    "scope",
    "actor",
    "client_id",
    "session_id",
    "token_id",
    "source_ip",
    "user_agent",
    "request_id",
)


def _actor_columns(actor: Actor) -> dict[str, Any]:
    """The actor's columns as stored: shared by every event of one request."""
    return {
        "scope": _text(actor.scope) or "anonymous",
        "actor": _text(actor.sub),
        "client_id": _text(actor.client_id),
        "session_id": _text(actor.session_id),
        "token_id": _text(actor.token_id),
        "source_ip": _ip(actor.source_ip),
        "user_agent": _text(actor.user_agent, 512),
        "request_id": _text(actor.request_id),
    }


@dataclass(frozen=True, slots=True)
class Prepared:
    """Events checked, encoded and digested, ready for one append: `common` holds the
    actor's columns, `rows` each event's own (with `detail` as canonical JSON text and
    `content`, its digest)."""

    common: dict[str, Any]
    rows: list[dict[str, Any]]


def _new_ids(count: int) -> list[uuid.UUID]:
    """Random (version 4) UUIDs, in asyncpg's own UUID type: a tenth of `uuid.UUID`'s cost."""
    raw = bytearray(os.urandom(16 * count))
    for start in range(0, 16 * count, 16):
        raw[start + 6] = (raw[start + 6] & 0x0F) | 0x40  # version 4
        raw[start + 8] = (raw[start + 8] & 0x3F) | 0x80  # RFC 4122 variant
    return [FastUUID(bytes(raw[start : start + 16])) for start in range(0, 16 * count, 16)]


def prepare(actor: Actor, events: Sequence[Event]) -> Prepared:
    """Check and encode events for an append; `ValueError` names the first bad one.

    Done in the caller's task, before anything is sent: a bad event fails its own request
    and no one else's. Events sharing one `detail` object share its encoding.
    """
    now = datetime.now(UTC)
    common = _actor_columns(actor)
    digests = DigestEncoder(common)
    details: dict[int, tuple[bytes, str]] = {}
    rows: list[dict[str, Any]] = []
    for event, event_id in zip(events, _new_ids(len(events)), strict=True):
        _check(event)
        detail = details.get(id(event.detail))
        if detail is None:
            canonical = canonical_detail(event.detail)
            if len(canonical) > MAX_DETAIL_BYTES:
                raise ValueError(f"audit detail over {MAX_DETAIL_BYTES} bytes")
            detail = details[id(event.detail)] = (canonical, canonical.decode())
        row = {
            "id": event_id,
            "occurred_at": event.occurred_at or now,
            "action": event.action,
            "crud": event.crud,
            "outcome": event.outcome,
            "outcome_reason": _text(event.reason, 500),
            "entity_type": _text(event.entity_type),
            "entity_id": _text(event.entity_id),
            "patient_id": event.patient_id,
            "detail": detail[0],
        }
        row["content"] = digests.digest(row)
        row["detail"] = detail[1]
        rows.append(row)
    return Prepared(common, rows)


def append_one_call(first: int) -> str:
    """`audit_events_append_one(...)` with its parameters numbered from `$first`, for a
    statement that records its own change (`append_one_arguments` gives the values)."""
    casts = {17: "::jsonb"}
    params = ", ".join(f"${first + n}{casts.get(n, '')}" for n in range(19))
    return f"audit_events_append_one({params})"


def append_one_arguments(prepared: Prepared) -> list[Any]:
    """The values of `append_one_call` for one prepared event."""
    if len(prepared.rows) != 1:
        raise ValueError("append_one_arguments takes exactly one event")
    row = prepared.rows[0]
    return [
        *prepared.common.values(),
        *(row[name] for name in PER_EVENT_COLUMNS),
        row["detail"],
        row["content"],
    ]


async def record_events(conn: asyncpg.Connection, actor: Actor, events: Sequence[Event]) -> None:
    """Append events to the actor's scope chain, in order, inside the caller's transaction.

    One statement. From it to the end of the caller's transaction, other writers in the
    same scope wait: record events last, just before the commit, and for one scope per
    transaction (two transactions recording in scopes A and B in opposite orders deadlock,
    and Postgres aborts one of them). Reads, which change nothing, record through the
    process's `AuditWriter` instead (app/audit/batcher.py): batched with other requests'.
    """
    if not events:
        return
    prepared = prepare(actor, events)
    common, rows = prepared.common, prepared.rows
    if len(rows) == 1:
        await conn.execute(_APPEND_ONE, *append_one_arguments(prepared))
        return
    await conn.execute(
        _APPEND,
        *common.values(),
        *([row[name] for row in rows] for name in PER_EVENT_COLUMNS),
        [row["detail"] for row in rows],
        [row["content"] for row in rows],
    )


async def record_event(conn: asyncpg.Connection, actor: Actor, event: Event) -> None:
    """Append one event inside the caller's transaction."""
    await record_events(conn, actor, [event])


async def record_independently(database: Database, actor: Actor, event: Event) -> None:
    """Record on a connection and transaction of its own (denied and failed requests)."""
    async with transaction(database) as conn:
        await record_event(conn, actor, event)


def _route_facts(request: Request) -> tuple[str, uuid.UUID | None]:
    """The matched route's path template (no ids in it) and the patient it is about."""
    route = request.scope.get("route")
    template = getattr(route, "path", None) or "<unmatched>"
    patient = request.path_params.get("patient_id")
    if patient is None and template.startswith("/api/patients/"):
        patient = request.path_params.get("id")
    return template, patient if isinstance(patient, uuid.UUID) else None


async def record_denial(request: Request, principal: Principal | None, error: AppError) -> None:
    """Record a refused request (403) independently of the request's own transaction.

    Fits `app.auth.requires.DenialHook`. A 401 (no principal) is not recorded: anonymous
    traffic must
    not be able to write to the audit log; the access log and metrics count it.
    """
    if principal is None:
        return
    template, patient_id = _route_facts(request)
    event = Event(
        action="access.denied",
        crud=_CRUD_OF_METHOD.get(request.method, "E"),
        outcome="denied",
        reason=error.detail,
        entity_type="route",
        entity_id=template,
        patient_id=patient_id,
        detail={"method": request.method, "status": error.status, "problem": error.type_name},
    )
    await record_independently(request.state.ctx.database, actor_from(request, principal), event)


async def record_failure(
    request: Request, principal: Principal | None, event: Event, error: AppError
) -> None:
    """Record that `event` failed (an Auth0 503, say) on a connection of its own.

    Call it where the error is caught, before re-raising, and outside the request's own
    transaction (which may roll back, and which holds the scope's chain lock if it recorded
    anything). A failure to record is logged and swallowed: the original error matters more.
    """
    failed = replace(
        event,
        outcome="failed",
        reason=error.detail,
        detail={**event.detail, "status": error.status, "problem": error.type_name},
    )
    try:
        await record_independently(
            request.state.ctx.database, actor_from(request, principal), failed
        )
    except Exception:
        logger.exception(
            "recording a failed request failed",
            extra={"request_id": getattr(request.state, "request_id", None)},
        )
