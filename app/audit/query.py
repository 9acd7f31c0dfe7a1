"""Reading the audit log: filtered pages, the checkpoint feed, exports, patient reports.

Every query names the caller's scope first; nothing here reads across scopes. Rows come
back in the public event shape (`event_item`), serialised without re-parsing `detail`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
import orjson
from databases import Database

from app.core.db import connection

MAX_WINDOW = timedelta(days=31)
EVENT_COLUMNS = (
    "seq",
    "id",
    "recorded_at",
    "occurred_at",
    "scope",  # part of what the hash covers: an exported event verifies on its own
    "action",
    "crud",
    "outcome",
    "outcome_reason",
    "actor",
    "client_id",
    "session_id",
    "token_id",
    "source_ip",
    "user_agent",
    "entity_type",
    "entity_id",
    "patient_id",
    "request_id",
    "detail",
    "prev_hash",
    "hash",
)
_SELECT = f"SELECT {', '.join(EVENT_COLUMNS[:-3])}, detail::text AS detail, prev_hash, hash"
# Cells a spreadsheet would run as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True, slots=True)
class AuditFilters:
    """One scope's events recorded in [since, until), narrowed by the optional filters.

    `action` is an exact code (`patient.read`) or a prefix ending in `.*` (`patient.*`).
    """

    scope: str
    since: datetime
    until: datetime
    actor: str | None = None
    action: str | None = None
    patient_id: uuid.UUID | None = None
    outcome: Literal["success", "denied", "failed"] | None = None
    request_id: str | None = None
    crud: Literal["C", "R", "U", "D", "E"] | None = None

    def fingerprint(self) -> str:
        """A short digest of the filters, to bind a cursor to the query it came from."""
        body = orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(body).hexdigest()[:24]

    def used(self) -> list[str]:
        """The names of the optional filters in use (for the audit.read event)."""
        optional = ("actor", "action", "patient_id", "outcome", "request_id", "crud")
        return [name for name in optional if getattr(self, name) is not None]


def _where(filters: AuditFilters) -> tuple[str, list[Any]]:
    """The WHERE clause and its arguments; values only ever travel as `$n` parameters."""
    args: list[Any] = [filters.scope, filters.since, filters.until]
    clauses = ["scope = $1", "recorded_at >= $2", "recorded_at < $3"]

    def add(template: str, value: Any) -> None:
        args.append(value)
        clauses.append(template.replace("$?", f"${len(args)}"))

    if filters.actor is not None:
        add("actor = $?", filters.actor)
    if filters.action is not None and filters.action.endswith(".*"):
        prefix = filters.action[:-1]
        add("split_part(action, '.', 1) = $?", prefix.split(".")[0])  # the family index
        if prefix.count(".") > 1:
            add("starts_with(action, $?)", prefix)
    elif filters.action is not None:
        add("action = $?", filters.action)
    if filters.patient_id is not None:
        # Every event that named the patient, through its link (migrations/0008).
        add(
            "(seq, recorded_at) IN (SELECT l.seq, l.recorded_at FROM audit_event_patients l"
            " WHERE l.patient_ids @> ARRAY[$?::uuid] AND l.recorded_at >= $2"
            " AND l.recorded_at < $3)",
            filters.patient_id,
        )
    if filters.outcome is not None:
        add("outcome = $?", filters.outcome)
    if filters.request_id is not None:
        add("request_id = $?", filters.request_id)
    if filters.crud is not None:
        add("crud = $?", filters.crud)
    return " AND ".join(clauses), args


async def _plan_for_values(conn: asyncpg.Connection) -> None:
    """Plan the next queries of this transaction for their actual values.

    asyncpg prepares statements, and after a few runs Postgres may switch to a generic plan
    that cannot see how selective `patient_id = $4` is next to a 31-day window: it then
    scans the window (hundreds of ms over a million events) instead of a 1 ms index lookup.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("audit queries with filters run inside a transaction")
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")


async def fetch_page(
    conn: asyncpg.Connection,
    filters: AuditFilters,
    *,
    limit: int,
    after: tuple[datetime, int] | None = None,
) -> tuple[list[asyncpg.Record], tuple[datetime, int] | None]:
    """A newest-first page; `after` is the (recorded_at, seq) key where the last one ended.

    Returns the rows and the key to continue from (None on the last page). Call it inside a
    transaction (it plans the query for the values given, see `_plan_for_values`).
    """
    await _plan_for_values(conn)
    where, args = _where(filters)
    if after is not None:
        args.extend(after)
        where += f" AND (recorded_at, seq) < (${len(args) - 1}, ${len(args)})"
    args.append(limit + 1)
    rows = await conn.fetch(
        f"{_SELECT} FROM audit_events WHERE {where} "
        f"ORDER BY recorded_at DESC, seq DESC LIMIT ${len(args)}",
        *args,
    )
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, (rows[-1]["recorded_at"], rows[-1]["seq"])


async def fetch_feed(
    conn: asyncpg.Connection, scope: str, after_seq: int, take: int
) -> tuple[list[asyncpg.Record], int, int]:
    """Checkpoint feed: the scope's events with `after_seq` < seq <= watermark, ascending.

    Returns the rows, the seq to continue after, and the watermark. `conn` must be in
    autocommit or a READ COMMITTED transaction: the watermark is read in one statement and
    the events in the next, whose snapshot sees every event committed at or below it
    (migrations/0002_audit.sql explains why).
    """
    watermark: int = await conn.fetchval("SELECT audit_events_watermark()")
    rows = await conn.fetch(
        f"{_SELECT} FROM audit_events WHERE scope = $1 AND seq > $2 AND seq <= $3 "
        "ORDER BY seq LIMIT $4",
        scope,
        after_seq,
        watermark,
        take,
    )
    if len(rows) == take:
        return rows, rows[-1]["seq"], watermark
    # Every event of this scope up to the watermark was returned: continue from there.
    return rows, max(after_seq, watermark), watermark


async def fetch_patient_events(
    conn: asyncpg.Connection, scope: str, patient_id: uuid.UUID, *, after_seq: int, limit: int
) -> tuple[list[asyncpg.Record], int | None]:
    """Every event of one scope that named a patient (about it, or showing it among others),
    oldest first; the seq to continue after."""
    rows = await conn.fetch(
        f"{_SELECT} FROM audit_events WHERE scope = $2 AND (seq, recorded_at) IN ("
        "SELECT l.seq, l.recorded_at FROM audit_event_patients l"
        " WHERE l.patient_ids @> ARRAY[$1::uuid] AND l.seq > $3) ORDER BY seq LIMIT $4",
        patient_id,
        scope,
        after_seq,
        limit + 1,
    )
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, rows[-1]["seq"]


async def archived_months(conn: asyncpg.Connection) -> list[str]:
    """The months (YYYY-MM) sealed into archives and no longer in the log, oldest first."""
    rows = await conn.fetch("SELECT month FROM audit_archived_months ORDER BY month")
    return [r["month"] for r in rows]


async def fetch_event(conn: asyncpg.Connection, scope: str, seq: int) -> asyncpg.Record | None:
    """One event of the scope by its seq (an index lookup in each partition)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"{_SELECT} FROM audit_events WHERE scope = $1 AND seq = $2", scope, seq
    )
    return row


def event_item(row: asyncpg.Record) -> dict[str, Any]:
    """An event in the public shape; `detail` is embedded as stored, not re-parsed."""
    item = dict(row.items())
    for name in ("id", "patient_id", "source_ip"):  # asyncpg's own UUID and ipaddress types
        item[name] = str(item[name]) if item[name] is not None else None
    item["detail"] = orjson.Fragment(item["detail"])
    item["prev_hash"] = item["prev_hash"].hex() if item["prev_hash"] is not None else None
    item["hash"] = item["hash"].hex()
    return item


def _csv_cell(value: Any) -> Any:
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, bytes):
        return value.hex()
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_lines(rows: Iterable[asyncpg.Record], *, header: bool = False) -> bytes:
    """Events as CSV rows (RFC 4180); a cell a spreadsheet would run as a formula is
    prefixed with a single quote, so it shows as text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(EVENT_COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row[name]) for name in EVENT_COLUMNS])
    return out.getvalue().encode()


def ndjson_lines(rows: Iterable[asyncpg.Record]) -> bytes:
    """Events as NDJSON: one event object per line."""
    return b"".join(orjson.dumps(event_item(row)) + b"\n" for row in rows)


RowEncoder = Callable[[Sequence[asyncpg.Record]], bytes]


async def export_events(
    database: Database,
    filters: AuditFilters,
    lines: RowEncoder,
    *,
    header: bytes = b"",
    batch: int = 1000,
) -> AsyncIterator[bytes]:
    """The filtered events, oldest first: `header`, then `lines` of each batch of events
    (`ndjson_lines`, `csv_lines`, or a caller's own format).

    A server-side cursor in a read-only repeatable-read transaction: one consistent
    snapshot, and at most one batch in memory whatever the count.
    """
    where, args = _where(filters)
    sql = f"{_SELECT} FROM audit_events WHERE {where} ORDER BY recorded_at, seq"
    if header:
        yield header
    async with (
        connection(database) as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        await _plan_for_values(conn)
        cursor = await conn.cursor(sql, *args)
        while rows := await cursor.fetch(batch):
            yield lines(rows)
