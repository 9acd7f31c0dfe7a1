"""HTTP handlers: the signed digests of the audit log, and the keys that check them.

`GET /api/audit-events/digests` serves the digests (every scope's heads, each named by a
keyed hash that only the service can compute) and tells the caller its own scope's name in
each (`your_scope`), so one tenant's auditors find their heads and learn nothing of the
others'; it records the read. `GET /.well-known/audit-keys` serves, without
authentication, the public keys an auditor needs: the configured ones (AUDIT_SIGNING_KEY,
AUDIT_RETIRED_KEYS), never a key read from the database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.audit.digests import digest_item, fetch_digests
from app.audit.edge import actor_from
from app.audit.events import Event
from app.audit.record import record_event
from app.audit.runtime import audit_of
from app.audit.schemas import AuditKeySet, DigestPage, DigestsQuery
from app.auth.requires import principal, requires
from app.core.db import transaction
from app.core.errors import BadRequest, ValidationFailed
from app.http.bodies import JSONResponse, parse_query
from app.http.context import context
from app.http.cursors import open_cursor, sign_cursor
from app.http.openapi import Resp, operation

TAGS = ["audit"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_END = datetime.max.replace(tzinfo=UTC)
KEYS_MAX_AGE = 300


def _bad_cursor(message: str) -> BadRequest:
    return BadRequest("the cursor is not valid", errors=[{"field": "cursor", "message": message}])


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        "the query string is invalid", errors=[{"field": field, "message": message}]
    )


def _utc(value: datetime | None, field: str, default: datetime) -> datetime:
    if value is None:
        return default
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+05:00
        raise _invalid(field, "out of range") from None


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICRO


@operation(
    "Signed digests of the audit chain heads, oldest first",
    tags=TAGS,
    query=DigestsQuery,
    responses={200: DigestPage},
    description="Each digest is a compact JWS (EdDSA) signed with a key in "
    "GET /.well-known/audit-keys; its payload names the previous digest's hash and the "
    "chain heads that changed since, each scope named by a keyed hash; `your_scope` is the "
    "caller's scope's name in that digest (docs/audit.md). The read is recorded as "
    "`audit.read`.",
)
@requires("read:audit_events")
async def list_digests(request: Request) -> Response:
    query = parse_query(request, DigestsQuery)
    since = _utc(query.since, "since", _EPOCH)
    until = _utc(query.until, "until", _END)
    if until <= since:
        raise _invalid("until", "must be after since")
    window = {"since": _micros(since), "until": _micros(until)}
    after = None
    if query.cursor is not None:
        payload = open_cursor(context(request).settings.derived_key("audit-cursor"), query.cursor)
        if payload.get("k") != "digests" or not all(
            isinstance(payload.get(key), int) for key in ("t", "q")
        ):
            raise _bad_cursor("not a cursor for this list")
        if payload.get("w") != window:
            raise _bad_cursor("the cursor was made for another window")
        after = (_EPOCH + payload["t"] * _MICRO, payload["q"])
    actor = actor_from(request, principal(request))
    async with transaction(context(request).database) as conn:
        rows, next_key = await fetch_digests(conn, since, until, after=after, limit=query.limit)
        detail: dict[str, Any] = {"view": "digests", "returned": len(rows)}
        detail |= {name: getattr(query, name).isoformat() for name in ("since", "until")
                   if getattr(query, name) is not None}  # fmt: skip
        await record_event(conn, actor, Event("audit.read", "R", detail=detail))
    next_cursor = None
    if next_key is not None:
        next_cursor = sign_cursor(
            context(request).settings.derived_key("audit-cursor"),
            {"k": "digests", "w": window, "t": _micros(next_key[0]), "q": next_key[1]},
        )
    names = audit_of(request).names
    items = [digest_item(r, actor.scope, names) for r in rows]
    return JSONResponse({"items": items, "next_cursor": next_cursor})


@operation(
    "The public keys that check the audit digests (JWKS: OKP, Ed25519)",
    tags=TAGS,
    responses={200: Resp(AuditKeySet, headers=("Cache-Control",))},
    description="No authentication. The configured keys: AUDIT_SIGNING_KEY's (the signing "
    "key first) and the retired ones of AUDIT_RETIRED_KEYS; never a key read from the "
    "database. Pin them: docs/audit.md.",
)
async def audit_keys(request: Request) -> Response:
    body = orjson.dumps({"keys": list(audit_of(request).published)})
    return Response(
        body,
        media_type="application/json",
        headers={"Cache-Control": f"public, max-age={KEYS_MAX_AGE}"},
    )


routes: list[BaseRoute] = [
    Route("/api/audit-events/digests", list_digests, methods=["GET"]),
    Route("/.well-known/audit-keys", audit_keys, methods=["GET"]),
]
