"""The Auth0 Log Streams webhook (custom webhook stream): feeds Auth0's logs, sign-in
history among them, into the audit log (app/account/logstream.py). Authenticated by the
stream's shared secret, not by an access token."""

from __future__ import annotations

import hmac
import logging

from pydantic import BaseModel, SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.account.emails import EMAIL_HASH_KEY, email_hash
from app.account.logstream import (
    MalformedBatch,
    TooManyItems,
    ingest,
    parse_batch,
    validate_batch,
)
from app.core.errors import BadRequest, PayloadTooLarge, Unauthorized
from app.http.bodies import JSONResponse
from app.http.context import context
from app.http.openapi import Problem, Resp, operation

logger = logging.getLogger(__name__)


def _problem(description: str) -> Resp:
    return Resp(Problem, description, media_type="application/problem+json")


def secret_matches(values: list[str], secret: SecretStr | None) -> bool:
    """The `Authorization` header against the stream's token, in constant time. Auth0 sends
    the configured value verbatim; `Bearer <token>` is accepted too."""
    if secret is None or len(values) != 1:
        return False
    expected = secret.get_secret_value().encode()
    given = values[0].strip().encode()
    scheme, _, rest = given.partition(b" ")
    bare = hmac.compare_digest(given, expected)
    bearer = hmac.compare_digest(rest.strip(), expected) and scheme.lower() == b"bearer"
    return bare or bearer


class Rejection(BaseModel):
    index: int
    log_id: str | None
    errors: list[dict[str, str]]


class IngestReport(BaseModel):
    received: int
    stored: int
    duplicates: int
    rejected: list[Rejection]
    more_rejected: int  # rejected beyond the first MAX_LISTED_REJECTIONS, not listed


# A report lists this many rejections at most: its size must not grow with the batch's.
MAX_LISTED_REJECTIONS = 100


@operation(
    "Auth0 Log Streams webhook: ingest logs into the audit log (idempotent by log_id)",
    tags=["admin"],
    security="logStreamToken",
    responses={
        200: Resp(IngestReport, "Every record stored or already known"),
        207: Resp(IngestReport, "Some records rejected (see `rejected`); the rest stored"),
        400: _problem("Not a JSON array, JSON object or JSON lines; nothing stored"),
        413: _problem("Body over the size limit or more than LOG_STREAM_MAX_ITEMS entries"),
    },
    description="Accepts Auth0's JSON array, JSON object and JSON lines formats, whatever "
    "the Content-Type, up to LOG_STREAM_MAX_ITEMS entries. A record without a usable "
    "`log_id`, `data.type` or `data.date` (at most 90 days old, at most a day ahead) is "
    "rejected and reported by its index (the first 100; `more_rejected` counts the rest); "
    "2xx either way, so Auth0 does not resend records that can never be stored.",
)
async def log_stream(request: Request) -> Response:
    ctx = context(request)
    if not secret_matches(
        request.headers.getlist("authorization"), ctx.settings.auth0.log_stream_token
    ):
        # Not audited: unauthenticated traffic must not be able to write to the audit log.
        logger.warning("log stream delivery refused: bad or missing secret")
        raise Unauthorized("the log stream secret is missing or wrong", realm="log-stream")
    limit = ctx.settings.account.log_stream_max_items
    try:
        items = parse_batch(await request.body(), max_items=limit)
    except MalformedBatch as exc:
        raise BadRequest(
            "the batch is malformed", errors=[{"field": "body", "message": str(exc)}]
        ) from None
    except TooManyItems as exc:
        raise PayloadTooLarge(
            f"{exc}; send smaller batches", errors=[{"field": "body", "message": str(exc)}]
        ) from None
    valid, rejected = await validate_batch(items)
    key = ctx.settings.derived_key(EMAIL_HASH_KEY)
    stored, duplicates = await ingest(
        ctx.database,
        valid,
        request_id=getattr(request.state, "request_id", None),
        hash_user_name=lambda name: email_hash(key, name),
        profile_fresh_seconds=ctx.settings.auth0.profile_cache_seconds,
    )
    body = {
        "received": len(items),
        "stored": stored,
        "duplicates": duplicates,
        "rejected": [
            {"index": r.index, "log_id": r.log_id, "errors": r.errors}
            for r in rejected[:MAX_LISTED_REJECTIONS]
        ],
        "more_rejected": max(0, len(rejected) - MAX_LISTED_REJECTIONS),
    }
    return JSONResponse(body, status_code=207 if rejected else 200)


routes: list[BaseRoute] = [
    Route("/hooks/auth0/log-stream", log_stream, methods=["POST"]),
]
