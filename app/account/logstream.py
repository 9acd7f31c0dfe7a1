"""Auth0 Log Streams (custom webhook) into the audit log.

Auth0 POSTs batches of `{"log_id", "data": {...}}` at least once and in no order, as a
JSON array, a single JSON object, or JSON lines (the stream's "content format"), whatever
the Content-Type says. Each log becomes one audit event, once: its id goes into
`auth0_log_ids` in the same transaction, and an id already there is a duplicate.

- A body that is not JSON in one of those formats is malformed: 400, nothing stored.
- A body of more than LOG_STREAM_MAX_ITEMS entries is refused whole (413), before any is
  validated: one request cannot buy unbounded work or an unbounded report.
- A record that is JSON but not a usable log (no id, no type, a bad address, a date older
  than 90 days or more than a day ahead) is rejected and reported by its index; the valid
  records of the batch are stored. Validation gives the event loop back every couple of
  milliseconds, so a large batch never stalls the other requests.

Each log's audit action comes from its Auth0 type code (app/account/logtypes.py); the
original code is kept in `detail.type`, and the event's `occurred_at` is the log's own
`date`. Fields Auth0 does not document as stable are ignored, and the free-text
`description` and `user_name` are never stored: they can hold email addresses. A user name
is kept only as a keyed hash, the same one the password-reset audit uses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import asyncpg
import orjson
from databases import Database
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    ValidationError,
    field_validator,
)

from app.account.cached_profiles import mark_stale
from app.account.logtypes import PROFILE_CHANGING, classify
from app.audit.batcher import record_many
from app.audit.events import Actor, Event
from app.core.db import transaction
from app.core.errors import field_errors

_PRINTABLE = r"^[\x21-\x7e]+$"
_USER_PATH = re.compile(r"/api/v2/users/([^/?#]+)")
# The window of log dates accepted: Auth0 redelivers for hours, not months, and a log id is
# remembered (to drop redeliveries) for AUTH0_LOG_ID_RETENTION_DAYS, 90 by default.
MAX_LOG_AGE = dt.timedelta(days=90)
MAX_LOG_AHEAD = dt.timedelta(days=1)
# Validation yields to the event loop after this long; one record takes tens of microseconds.
VALIDATION_SLICE_SECONDS = 0.002
# Whitespace around and between lines: collapses blank lines without a Python-level loop.
_LINE_BREAKS = re.compile(rb"\s*[\r\n]\s*")

INSERT_LOG_IDS = """
INSERT INTO auth0_log_ids (log_id)
SELECT id FROM unnest($1::text[]) AS id ORDER BY id
ON CONFLICT (log_id) DO NOTHING
RETURNING log_id
"""
PURGE_LOG_IDS = "DELETE FROM auth0_log_ids WHERE ingested_at < now() - $1 * interval '1 day'"


class MalformedBatch(Exception):
    """The body is not a batch in any format Auth0 sends; the message says where."""


class TooManyItems(Exception):
    """The batch holds more entries than one request may carry."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a batch may hold at most {limit} entries")
        self.limit = limit


def _blank_to_none(value: Any) -> Any:
    return None if value == "" else value


class LogData(BaseModel):
    """The fields of an Auth0 log we keep. Others are ignored, not refused: the payload is
    Auth0's, and it adds fields over time."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    date: AwareDatetime
    log_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=_PRINTABLE)
    user_id: str | None = Field(default=None, min_length=1, max_length=255)
    user_name: str | None = Field(default=None, max_length=320)
    ip: IPvAnyAddress | None = None
    user_agent: str | None = None
    client_id: str | None = Field(default=None, max_length=128)
    client_name: str | None = Field(default=None, max_length=200)
    connection: str | None = Field(default=None, max_length=200)
    strategy: str | None = Field(default=None, max_length=100)
    organization_id: str | None = Field(default=None, max_length=64, pattern=_PRINTABLE)
    # A Management API operation's request (`sapi`): its path names the user it changed.
    details: dict[str, Any] | None = None

    _blanks = field_validator(
        "log_id",
        "user_id",
        "user_name",
        "ip",
        "user_agent",
        "client_id",
        "client_name",
        "connection",
        "strategy",
        "organization_id",
        mode="before",
    )(_blank_to_none)

    @field_validator("user_agent")
    @classmethod
    def _truncate(cls, value: str | None) -> str | None:
        return value[:512] if value else value  # the audit column's limit

    @field_validator("details", mode="before")
    @classmethod
    def _objects_only(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else None

    def changed_user(self) -> str | None:
        """The user whose Auth0 record this log says changed, if it says so."""
        if self.type not in PROFILE_CHANGING:
            return None
        request = (self.details or {}).get("request")
        path = request.get("path") if isinstance(request, dict) else None
        if isinstance(path, str) and (found := _USER_PATH.fullmatch(path)):
            return unquote(found.group(1))[:255] or None
        return self.user_id if self.type != "sapi" else None


class LogRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    log_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=_PRINTABLE)
    data: LogData

    @property
    def id(self) -> str:
        found = self.log_id or self.data.log_id
        assert found is not None  # checked by `validate_records`
        return found


@dataclass(frozen=True, slots=True)
class Rejected:
    index: int
    log_id: str | None
    errors: list[dict[str, str]]


def parse_batch(body: bytes, *, max_items: int | None = None) -> list[Any]:
    """The items of a JSON array, a JSON object or JSON lines; `MalformedBatch` otherwise,
    `TooManyItems` past `max_items` (JSON lines are counted before any is parsed)."""
    text = body.strip()
    if not text:
        raise MalformedBatch("the body is empty")
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # several lines, perhaps
    else:
        if isinstance(document, dict):
            document = [document]
        if not isinstance(document, list):
            raise MalformedBatch("expected a JSON array, a JSON object or JSON lines")
        if max_items is not None and len(document) > max_items:
            raise TooManyItems(max_items)
        return document
    lines = text.splitlines()
    if max_items is not None and len(lines) > max_items:
        lines = _LINE_BREAKS.split(text)  # without blank lines, which are not entries
        if len(lines) > max_items:
            raise TooManyItems(max_items)
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise MalformedBatch(f"line {number} is not JSON") from None
    return items


def validate_record(index: int, item: Any, now: dt.datetime) -> LogRecord | Rejected:
    """One item as a usable record, or its rejection (by index, with field errors)."""
    given_id = item.get("log_id") if isinstance(item, dict) else None
    given_id = given_id if isinstance(given_id, str) and len(given_id) <= 128 else None
    if not isinstance(item, dict):
        return Rejected(index, None, [{"field": "record", "message": "expected an object"}])
    try:
        record = LogRecord.model_validate(item)
    except ValidationError as exc:
        return Rejected(index, given_id, field_errors(exc))
    inner = record.data.log_id
    if record.log_id is None and inner is None:
        errors = [{"field": "log_id", "message": "Field required"}]
    elif record.log_id is not None and inner is not None and inner != record.log_id:
        errors = [{"field": "data.log_id", "message": "differs from log_id"}]
    elif not now - MAX_LOG_AGE <= record.data.date <= now + MAX_LOG_AHEAD:
        errors = [{"field": "data.date", "message": "older than 90 days or a day ahead"}]
    else:
        return record
    return Rejected(index, given_id, errors)


def validate_records(
    items: Sequence[Any], *, now: dt.datetime | None = None
) -> tuple[list[LogRecord], list[Rejected]]:
    """Split items into usable records and rejected ones, in one go (small batches)."""
    now = now or dt.datetime.now(dt.UTC)
    outcomes = [validate_record(index, item, now) for index, item in enumerate(items)]
    valid = [o for o in outcomes if isinstance(o, LogRecord)]
    return valid, [o for o in outcomes if isinstance(o, Rejected)]


async def validate_batch(
    items: Sequence[Any],
    *,
    now: dt.datetime | None = None,
    slice_seconds: float = VALIDATION_SLICE_SECONDS,
) -> tuple[list[LogRecord], list[Rejected]]:
    """`validate_records`, yielding to the event loop every `slice_seconds`."""
    now = now or dt.datetime.now(dt.UTC)
    valid: list[LogRecord] = []
    rejected: list[Rejected] = []
    await asyncio.sleep(0)  # the caller may just have parsed the batch
    deadline = time.perf_counter() + slice_seconds
    for index, item in enumerate(items):
        outcome = validate_record(index, item, now)
        if isinstance(outcome, LogRecord):
            valid.append(outcome)
        else:
            rejected.append(outcome)
        if time.perf_counter() >= deadline:
            await asyncio.sleep(0)
            deadline = time.perf_counter() + slice_seconds
    return valid, rejected


def audit_entry(
    record: LogRecord, *, request_id: str | None, hash_user_name: Callable[[str], str]
) -> tuple[Actor, Event]:
    """The audit actor and event for one log: the user acted, from the log's address."""
    data = record.data
    if data.organization_id:
        scope = f"org:{data.organization_id}"
    elif data.user_id:
        scope = f"user:{data.user_id}"
    else:
        scope = "tenant"  # e.g. a failed sign-in with an unknown user name
    actor = Actor(
        scope=scope,
        sub=data.user_id,
        client_id=data.client_id,
        source_ip=str(data.ip) if data.ip is not None else None,
        user_agent=data.user_agent,
        request_id=request_id,
    )
    action, outcome, reason = classify(data.type)
    detail: dict[str, Any] = {
        "source": "auth0",
        "type": data.type,
        "date": data.date.astimezone(dt.UTC).isoformat(),
    }
    optional = {
        "client_name": data.client_name,
        "connection": data.connection,
        "strategy": data.strategy,
        "organization_id": data.organization_id,
        "user_name_hash": hash_user_name(data.user_name) if data.user_name else None,
    }
    detail.update({k: v for k, v in optional.items() if v is not None})
    event = Event(
        action,
        "E",
        outcome,
        reason=reason,
        entity_type="auth0_log",
        entity_id=record.id,
        detail=detail,
        occurred_at=data.date,
    )
    return actor, event


async def ingest(
    database: Database,
    records: Sequence[LogRecord],
    *,
    request_id: str | None,
    hash_user_name: Callable[[str], str],
    profile_fresh_seconds: float | None = None,
) -> tuple[int, int]:
    """Store the logs not seen before, with their ids, in one transaction, and (given
    `profile_fresh_seconds`) mark stale the cached profiles of the users they say changed.

    Returns (stored, duplicates). Ids are inserted in sorted order, and the events of all
    scopes are appended in one statement that locks scopes in one global order, so two
    deliveries of overlapping batches cannot deadlock; the later one waits for the earlier
    and then finds its ids taken.
    """
    first: dict[str, LogRecord] = {}
    for record in records:
        first.setdefault(record.id, record)
    if not first:
        return 0, len(records)
    async with transaction(database) as conn:
        new_ids = {row["log_id"] for row in await conn.fetch(INSERT_LOG_IDS, sorted(first))}
        groups: dict[Actor, list[Event]] = {}
        for log_id, record in first.items():
            if log_id in new_ids:
                actor, event = audit_entry(
                    record, request_id=request_id, hash_user_name=hash_user_name
                )
                groups.setdefault(actor, []).append(event)
        await record_many(conn, list(groups.items()))
        if profile_fresh_seconds is not None:
            changed = [first[i].data.changed_user() for i in sorted(new_ids)]
            users = [user for user in changed if user is not None]
            await mark_stale(conn, users, fresh_seconds=profile_fresh_seconds)
    return len(new_ids), len(records) - len(new_ids)


async def purge_ingested_log_ids(conn: asyncpg.Connection, *, older_than_days: int) -> None:
    """Forget ids older than Auth0 could redeliver (its retries span hours, not months)."""
    await conn.execute(PURGE_LOG_IDS, float(older_than_days), timeout=30)
