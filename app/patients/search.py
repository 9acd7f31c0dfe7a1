"""Patient lists: search, keyset cursors, and the audited page read every list goes through.

Pages are newest first on `(created_at, id)`, continued by a cursor holding the last row's
position, so rows inserted meanwhile never shift a page (no offsets). The cursor is signed
(`app.http.cursors.sign_cursor`) and bound by an HMAC to the scope and filters it was issued for.

A name matches as a prefix of the given or the family name, ignoring case and accents: both
sides are compared in their `fold`ed form, stored in indexed columns (`text_pattern_ops`), and
the prefix is a byte range so the index serves it even under a generic prepared plan.

A page is recorded as one audit event naming every patient on it, before the page is
returned (through the process's `AuditWriter`): when the record cannot be written, the read
fails.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg
import orjson
from databases import Database

from app.audit.batcher import AuditWriter
from app.audit.events import Actor, Event
from app.core.db import connection
from app.core.errors import BadRequest
from app.core.timings import phase
from app.http.cursors import open_cursor, sign_cursor
from app.patients.events import listed_event, searched_event
from app.patients.repository import COLUMNS, fold
from app.patients.schemas import Patient, patient_json

Position = tuple[datetime, UUID]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Above every other code point in UTF-8 byte order: `prefix + _TOP` bounds the prefix range.
_TOP = "\U0010ffff"


@dataclass(frozen=True, slots=True)
class PatientFilters:
    """Search filters; all given must match. `name` is a prefix, the others exact."""

    name: str | None = None
    birth_date: date | None = None
    identifier: tuple[str, str] | None = None

    def used(self) -> list[str]:
        """The names of the filters given (never their values: those are patient data)."""
        return [n for n in ("name", "birth_date", "identifier") if getattr(self, n) is not None]


NO_FILTERS = PatientFilters()


def _search_sql(
    scope: str, filters: PatientFilters, after: Position | None, limit: int
) -> tuple[str, list[Any]]:
    """Fixed SQL fragments joined with numbered placeholders; values only ever as arguments."""
    args: list[Any] = [scope]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    sql = [f"SELECT {COLUMNS} FROM patients WHERE scope = $1 AND deleted_at IS NULL"]
    if filters.name is not None:
        prefix = fold(filters.name)
        low, high = arg(prefix), arg(prefix + _TOP)
        sql.append(
            f"AND ((given_name_folded ~>=~ {low} AND given_name_folded ~<~ {high})"
            f" OR (family_name_folded ~>=~ {low} AND family_name_folded ~<~ {high}))"
        )
    if filters.birth_date is not None:
        sql.append(f"AND birth_date = {arg(filters.birth_date)}")
    if filters.identifier is not None:
        system, value = filters.identifier
        sql.append(f"AND identifier_system = {arg(system)} AND identifier_value = {arg(value)}")
    if after is not None:
        sql.append(f"AND (created_at, id) < ({arg(after[0])}, {arg(after[1])})")
    sql.append(f"ORDER BY created_at DESC, id DESC LIMIT {arg(limit + 1)}")
    return "\n".join(sql), args


async def list_patients(
    conn: asyncpg.Connection,
    scope: str,
    *,
    limit: int,
    filters: PatientFilters = NO_FILTERS,
    after: Position | None = None,
) -> tuple[list[asyncpg.Record], Position | None]:
    """Up to `limit` live patients of `scope`, newest first, after `after`; and the position
    to continue from (None on the last page). Unaudited: lists shown to a caller go through
    `read_page_audited`."""
    sql, args = _search_sql(scope, filters, after, limit)
    rows = await conn.fetch(sql, *args)
    if len(rows) <= limit:
        return list(rows), None
    page = list(rows[:limit])
    return page, (page[-1]["created_at"], page[-1]["id"])


def _binding(key: bytes, scope: str, filters: PatientFilters) -> str:
    """An opaque tag of the query a cursor belongs to (keyed, so it reveals nothing)."""
    parts = [
        scope,
        fold(filters.name) if filters.name is not None else None,
        filters.birth_date.isoformat() if filters.birth_date else None,
        list(filters.identifier) if filters.identifier else None,
    ]
    return hmac.new(key, orjson.dumps(parts), hashlib.sha256).hexdigest()[:16]


def encode_cursor(key: bytes, scope: str, filters: PatientFilters, position: Position) -> str:
    at, patient_id = position
    micros = (at - _EPOCH) // timedelta(microseconds=1)
    return sign_cursor(key, {"t": micros, "i": str(patient_id), "q": _binding(key, scope, filters)})


def decode_cursor(key: bytes, scope: str, filters: PatientFilters, cursor: str) -> Position:
    """The position in a cursor we issued for this scope and filters; 400 otherwise."""
    payload = open_cursor(key, cursor)
    try:
        if payload.get("q") != _binding(key, scope, filters):
            raise ValueError("another query")
        micros = payload["t"]
        if not isinstance(micros, int):
            raise ValueError("bad position")
        return _EPOCH + timedelta(microseconds=micros), UUID(str(payload["i"]))
    except (KeyError, ValueError, OverflowError):
        raise BadRequest(
            "the cursor does not belong to this search",
            errors=[{"field": "cursor", "message": "use the cursor with the same filters"}],
        ) from None


@dataclass(frozen=True, slots=True)
class Page:
    """A page as read, not yet shown: its rows and where the next one starts."""

    rows: list[asyncpg.Record]
    position: Position | None


async def read_page(
    conn: asyncpg.Connection,
    scope: str,
    *,
    cursor_key: bytes,
    limit: int = 50,
    filters: PatientFilters = NO_FILTERS,
    cursor: str | None = None,
) -> Page:
    """One page of the scope's patients, on the caller's connection; shown only through
    `show_page_audited`. A bad cursor is `BadRequest`."""
    after = decode_cursor(cursor_key, scope, filters, cursor) if cursor else None
    with phase("page_query"):
        rows, position = await list_patients(conn, scope, limit=limit, filters=filters, after=after)
    return Page(rows, position)


async def show_page_audited(
    audit: AuditWriter,
    actor: Actor,
    scope: str,
    page: Page,
    *,
    cursor_key: bytes,
    filters: PatientFilters = NO_FILTERS,
    next_page: bool = False,
    via: Literal["profile", "search"] = "profile",
) -> dict[str, Any]:
    """The page as `{"items": [...], "next_cursor": ...}`, once its one event is committed:
    a search's `patient.searched` (the filter names and the ids shown), or the profile's
    `patient.read` listing the ids shown. When the record cannot be written this raises and
    the page is never shown. Call it after the page's connection went back to the pool."""
    shown = [row["id"] for row in page.rows]
    event: Event | None
    if via == "search":
        event = searched_event(filters.used(), shown, next_page=next_page)
    elif shown:
        event = listed_event(shown, via)
    else:
        event = None  # an empty profile page shows no patient
    if event is not None:
        with phase("audit_wait"):
            await audit.record(actor, [event])
    items: list[Patient] = [patient_json(row) for row in page.rows]
    position = page.position
    next_cursor = encode_cursor(cursor_key, scope, filters, position) if position else None
    return {"items": items, "next_cursor": next_cursor}


async def read_page_audited(
    database: Database,
    audit: AuditWriter,
    actor: Actor,
    scope: str,
    *,
    cursor_key: bytes,
    limit: int = 50,
    filters: PatientFilters = NO_FILTERS,
    cursor: str | None = None,
    via: Literal["profile", "search"] = "profile",
) -> dict[str, Any]:
    """One page of the scope's patients, shown once its one event is committed
    (`show_page_audited`).

    The page is one autocommitted SELECT; its connection goes back to the pool before the
    record is written, through `audit` (batched with other requests' records).

    `cursor_key` is `settings.derived_key("patient-cursor")`, so `next_cursor` continues with
    `GET /api/patients?cursor=...` (with the same filters). A bad cursor is `BadRequest`.
    """
    async with connection(database) as conn:
        page = await read_page(
            conn, scope, cursor_key=cursor_key, limit=limit, filters=filters, cursor=cursor
        )
    return await show_page_audited(
        audit,
        actor,
        scope,
        page,
        cursor_key=cursor_key,
        filters=filters,
        next_page=bool(cursor),
        via=via,
    )
