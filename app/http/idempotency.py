"""`Idempotency-Key` for creating POSTs: the first response to a key is replayed for 24 h.

Keys belong to a caller (the token's `sub`): another caller's identical key is a different
key. The key is claimed inside the request's own transaction by `INSERT ... ON CONFLICT`, and
the response is stored in that same transaction. A concurrent request with the same key
therefore waits on the row until the first commits (then replays its response) or rolls back
(then goes ahead itself): one effect, never two, and no "in progress" state to clean up.

The fingerprint covers the operation, the scope and the validated body, so the same key with
a different request is refused with 422 rather than silently answered with the old result.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
from starlette.requests import Request

from app.core.errors import BadRequest, Conflict, ValidationFailed

HEADER = "Idempotency-Key"
TTL = timedelta(hours=24)
# Visible ASCII, as the IETF draft's examples (UUIDs, random tokens); bounded for the index.
_KEY = re.compile(r"[\x21-\x7e]{1,255}")

CLAIM = """
INSERT INTO idempotency_keys AS k (caller, idempotency_key, request_hash, expires_at)
VALUES ($1, $2, $3, now() + $4::interval)
ON CONFLICT (caller, idempotency_key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash, status = NULL, body = NULL, headers = NULL,
        created_at = now(), expires_at = EXCLUDED.expires_at
    WHERE k.expires_at <= now()
RETURNING true
"""
LOOKUP = """
SELECT request_hash, status, body::text AS body, headers::text AS headers
FROM idempotency_keys WHERE caller = $1 AND idempotency_key = $2
"""
COMPLETE = """
UPDATE idempotency_keys SET status = $3, body = $4::jsonb, headers = $5::jsonb
WHERE caller = $1 AND idempotency_key = $2
"""
PURGE = """
DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))
"""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def key_from(request: Request) -> str | None:
    """The request's Idempotency-Key, or None; 400 when malformed or repeated."""
    values = request.headers.getlist(HEADER)
    if not values:
        return None
    if len(values) > 1 or not _KEY.fullmatch(values[0]):
        raise BadRequest(
            "the Idempotency-Key header is not valid",
            errors=[{"field": HEADER, "message": "one value of 1-255 visible ASCII characters"}],
        )
    return values[0]


def fingerprint(*parts: Any) -> bytes:
    """A digest of what makes two requests the same request (JSON-serialisable parts)."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).digest()


async def claim(
    conn: asyncpg.Connection, caller: str, key: str, request_hash: bytes
) -> StoredResponse | None:
    """None when this request now owns the key (go ahead, then `complete`); else the stored
    response to replay. 422 when the key was used for a different request. Must run inside
    the transaction that does the work."""
    if await conn.fetchval(CLAIM, caller, key, request_hash, TTL):
        return None
    row = await conn.fetchrow(LOOKUP, caller, key)
    if row is None or row["status"] is None:
        # Unreachable while claims and completions share a transaction; refuse, never guess.
        raise Conflict("a request with this Idempotency-Key is still in progress")
    if row["request_hash"] != request_hash:
        raise ValidationFailed(
            "this Idempotency-Key was already used for a different request",
            errors=[{"field": HEADER, "message": "already used with a different body"}],
        )
    return StoredResponse(row["status"], orjson.loads(row["body"]), orjson.loads(row["headers"]))


async def complete(
    conn: asyncpg.Connection, caller: str, key: str, response: StoredResponse
) -> None:
    """Store the response for replay (in the claiming transaction)."""
    await conn.execute(
        COMPLETE,
        caller,
        key,
        response.status,
        orjson.dumps(response.body).decode(),
        orjson.dumps(response.headers).decode(),
    )


async def purge_expired(conn: asyncpg.Connection, limit: int = 1000) -> int:
    """Delete up to `limit` expired keys; returns how many. Safe to run from anywhere."""
    status: str = await conn.execute(PURGE, limit)
    return int(status.rsplit(" ", 1)[-1])
