"""Auth0 Log Streams (custom webhook) into the audit log.

Auth0 POSTs batches of `{"log_id", "data": {...}}` at least once and in no order, as a
JSON array, a single JSON object, or JSON lines (the stream's "content format"), whatever
the Content-Type says. Each log becomes one audit event, once: its id goes into
`auth0_log_ids` in the same transaction, and an id already there is a duplicate.

- A body that is not JSON in one of those formats is malformed: 400, nothing stored.
- A record that is JSON but not a usable log (no id, no type, a bad date or address) is
  rejected and reported by its index; the valid records of the batch are stored.

Actions are `idp.*` (action codes are `[a-z_]` segments, so "auth0" cannot be one), e.g.
`idp.login.failed`; the original Auth0 type code (`s`, `f`, `fp`, `fu`, `ss`, `slo`, ...) is
kept in `detail.type`; the event's `occurred_at` is the log's own `date`. Unknown codes are kept as
`idp.log.other`. Fields Auth0 does not document as stable are ignored, and the free-text
`description` and `user_name` are never stored: they can hold email addresses. A user name
is kept only as a keyed hash, the same one the password-reset audit uses.

A little over 300 lines, a sixth of them Auth0's table of log types: parsing, mapping and
storing a batch read best in one place.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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

from app.audit.batcher import record_many
from app.audit.events import Actor, Event, Outcome
from app.core.db import transaction
from app.core.errors import field_errors

_PRINTABLE = r"^[\x21-\x7e]+$"

# Auth0 log type code -> (action, outcome, reason for a non-success outcome).
EVENT_TYPES: dict[str, tuple[str, Outcome, str | None]] = {
    "s": ("idp.login.success", "success", None),
    "scoa": ("idp.login.success", "success", None),
    "f": ("idp.login.failed", "failed", "sign-in failed"),
    "fp": ("idp.login.failed", "failed", "wrong password"),
    "fu": ("idp.login.failed", "failed", "unknown email or username"),
    "fc": ("idp.login.failed", "failed", "connector failure"),
    "fco": ("idp.login.failed", "failed", "origin not allowed"),
    "fcoa": ("idp.login.failed", "failed", "cross-origin sign-in failed"),
    "limit_wc": ("idp.login.blocked", "denied", "account blocked after failed attempts"),
    "limit_sul": ("idp.login.blocked", "denied", "user blocked after failed attempts"),
    "limit_mu": ("idp.login.blocked", "denied", "IP address blocked"),
    "pwd_leak": ("idp.login.breached_password", "denied", "breached password"),
    "ss": ("idp.signup.success", "success", None),
    "fs": ("idp.signup.failed", "failed", "sign-up failed"),
    "slo": ("idp.logout.success", "success", None),
    "flo": ("idp.logout.failed", "failed", "sign-out failed"),
    "gd_auth_succeed": ("idp.mfa.success", "success", None),
    "gd_auth_failed": ("idp.mfa.failed", "failed", "wrong second factor"),
    "gd_auth_rejected": ("idp.mfa.failed", "denied", "second factor rejected"),
    "gd_otp_rate_limit_exceed": ("idp.mfa.failed", "denied", "too many second-factor codes"),
    "gd_enrollment_complete": ("idp.mfa.enrolled", "success", None),
    "ssa": ("idp.silent_auth.success", "success", None),
    "fsa": ("idp.silent_auth.failed", "failed", "silent authentication failed"),
    "scp": ("idp.password_change.success", "success", None),
    "fcp": ("idp.password_change.failed", "failed", "password change failed"),
    "scpr": ("idp.password_reset.requested", "success", None),
    "fcpr": ("idp.password_reset.failed", "failed", "password reset request failed"),
    "sv": ("idp.email_verification.success", "success", None),
    "fv": ("idp.email_verification.failed", "failed", "email verification failed"),
    "svr": ("idp.email_verification.requested", "success", None),
    "fvr": ("idp.email_verification.failed", "failed", "verification email failed"),
    "seacft": ("idp.token_exchange.success", "success", None),
    "feacft": ("idp.token_exchange.failed", "failed", "code exchange failed"),
    "sertft": ("idp.refresh_token.success", "success", None),
    "fertft": ("idp.refresh_token.failed", "failed", "refresh token exchange failed"),
}
OTHER_ACTION = "idp.log.other"
# The actions that are sign-in history (GET /api/me/logins), besides the service's own.
SIGN_IN_ACTIONS = (
    "idp.login.success",
    "idp.login.failed",
    "idp.login.blocked",
    "idp.login.breached_password",
    "idp.signup.success",
    "idp.signup.failed",
    "idp.logout.success",
    "idp.logout.failed",
    "idp.mfa.success",
    "idp.mfa.failed",
)

INSERT_LOG_IDS = """
INSERT INTO auth0_log_ids (log_id)
SELECT id FROM unnest($1::text[]) AS id ORDER BY id
ON CONFLICT (log_id) DO NOTHING
RETURNING log_id
"""
PURGE_LOG_IDS = "DELETE FROM auth0_log_ids WHERE ingested_at < now() - $1 * interval '1 day'"


class MalformedBatch(Exception):
    """The body is not a batch in any format Auth0 sends; the message says where."""


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


def parse_batch(body: bytes) -> list[Any]:
    """The items of a JSON array, a JSON object or JSON lines; `MalformedBatch` otherwise."""
    text = body.strip()
    if not text:
        raise MalformedBatch("the body is empty")
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # several lines, perhaps
    else:
        if isinstance(document, list):
            return document
        if isinstance(document, dict):
            return [document]
        raise MalformedBatch("expected a JSON array, a JSON object or JSON lines")
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise MalformedBatch(f"line {number} is not JSON") from None
    return items


def validate_records(items: Sequence[Any]) -> tuple[list[LogRecord], list[Rejected]]:
    """Split items into usable records and rejected ones (by index, with field errors)."""
    valid: list[LogRecord] = []
    rejected: list[Rejected] = []
    for index, item in enumerate(items):
        given_id = item.get("log_id") if isinstance(item, dict) else None
        given_id = given_id if isinstance(given_id, str) and len(given_id) <= 128 else None
        if not isinstance(item, dict):
            errors = [{"field": "record", "message": "expected an object"}]
            rejected.append(Rejected(index, None, errors))
            continue
        try:
            record = LogRecord.model_validate(item)
        except ValidationError as exc:
            rejected.append(Rejected(index, given_id, field_errors(exc)))
            continue
        inner = record.data.log_id
        if record.log_id is None and inner is None:
            errors = [{"field": "log_id", "message": "Field required"}]
        elif record.log_id is not None and inner is not None and inner != record.log_id:
            errors = [{"field": "data.log_id", "message": "differs from log_id"}]
        else:
            valid.append(record)
            continue
        rejected.append(Rejected(index, given_id, errors))
    return valid, rejected


def classify(code: str) -> tuple[str, Outcome, str | None]:
    """The audit action and outcome of an Auth0 log type; unknown codes by their letter."""
    known = EVENT_TYPES.get(code)
    if known is not None:
        return known
    if code.startswith("f"):
        return OTHER_ACTION, "failed", f"Auth0 log type {code}"
    return OTHER_ACTION, "success", None


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
) -> tuple[int, int]:
    """Store the logs not seen before, with their ids, in one transaction.

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
    return len(new_ids), len(records) - len(new_ids)


async def purge_ingested_log_ids(conn: asyncpg.Connection, *, older_than_days: int) -> None:
    """Forget ids older than Auth0 could redeliver (its retries span hours, not months)."""
    await conn.execute(PURGE_LOG_IDS, float(older_than_days), timeout=30)
