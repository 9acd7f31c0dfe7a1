"""Audit events as the service builds them: who acted (`Actor`), what happened (`Event`),
and `prepare`, which checks and encodes them for an append (app/audit/record.py writes
them, app/audit/batcher.py batches reads')."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from asyncpg.pgproto.pgproto import UUID as FastUUID

from app.audit.chain import DigestEncoder, canonical_detail
from app.auth.tokens import Principal

Crud = Literal["C", "R", "U", "D", "E"]
Outcome = Literal["success", "denied", "failed"]

ACTION_PATTERN = re.compile(r"[a-z_]+(\.[a-z_]+)+")
# Room for the ids of a full page of patients (200 at 39 bytes each) beside the rest.
MAX_DETAIL_BYTES = 16_384
_CRUD = frozenset("CRUDE")
_OUTCOMES = frozenset({"success", "denied", "failed"})
CRUD_OF_METHOD: dict[str, Crud] = {
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

    def acting_as(self, principal: Principal, *, scope: str | None = None) -> Actor:
        """This request's actor as the verified caller `principal`, in its data scope (or
        `scope`), keeping where the request came from."""
        return Actor(
            scope=scope or scope_of(principal),
            sub=principal.sub,
            client_id=principal.client_id,
            session_id=principal.sid,
            token_id=principal.jti,
            source_ip=self.source_ip,
            user_agent=self.user_agent,
            request_id=self.request_id,
        )


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
