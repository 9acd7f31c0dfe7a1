"""Account endpoints: the seed documents' password reset, email verification, sign-out and
sign-in history, with Auth0 doing the credential work and this service triggering it,
limiting it and recording it.

Auth0 calls are made first and recorded after (success, or failure on a connection of its
own): holding an audit transaction open across an Auth0 call would hold the scope's audit
chain lock for as long as Auth0 takes.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.account.emails import EMAIL_HASH_KEY, email_hash
from app.account.history import sign_in_history
from app.account.runtime import account_of
from app.audit.edge import actor_from, record_failure
from app.audit.events import Event
from app.audit.record import record_event, record_independently
from app.auth.requires import principal, requires
from app.auth.tokens import Principal
from app.auth0.management import auth0_of
from app.core.db import connection, transaction
from app.core.errors import AppError, BadRequest
from app.http.bodies import JSONResponse, parse_body, parse_query
from app.http.context import context
from app.http.cursors import open_cursor, sign_cursor
from app.http.openapi import Problem, Resp, operation

logger = logging.getLogger(__name__)
NO_STORE = {"Cache-Control": "no-store"}


def _problem(description: str) -> Resp:
    return Resp(Problem, description, media_type="application/problem+json")


CURSOR_KEY = "cursor:me-logins"


# --- Password reset ----------------------------------------------------------------------


class PasswordResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr = Field(max_length=320)


class Accepted(BaseModel):
    status: Literal["accepted"]
    detail: str


RESET_ACCEPTED = {
    "status": "accepted",
    "detail": "If an account uses this address, an email with a reset link is on its way.",
}


@operation(
    "Forgot password: ask Auth0 to email a reset link (same answer for any address)",
    tags=["account"],
    body=PasswordResetRequest,
    responses={
        202: Resp(Accepted, "Accepted, whether or not an account uses the address"),
        429: _problem("Too many requests for this address or from this IP (see Retry-After)"),
    },
)
async def password_reset(request: Request) -> Response:
    """Seed 003 "Forgot Password": the answer and its timing say nothing about the address.

    The service never knows whether the address has an account: Auth0 does, and it answers
    alike either way. Its call runs after the response, so its duration cannot show.
    """
    ctx = context(request)
    account = account_of(request)
    body = await parse_body(request, PasswordResetRequest)
    hashed = email_hash(ctx.settings.derived_key(EMAIL_HASH_KEY), body.email)
    ip = request.client.host if request.client else "unknown"
    limiter = account.limiter
    async with connection(ctx.database) as conn:
        try:
            await limiter.take(
                conn,
                [
                    (f"password_reset:ip:{ip}", limiter.password_reset_per_ip),
                    (f"password_reset:email:{hashed}", limiter.password_reset_per_email),
                ],
            )
        except AppError:
            # Not audited: anonymous traffic must not be able to write to the audit log.
            logger.warning("password reset rate-limited", extra={"email_hash": hashed})
            raise
    actor = actor_from(request, None)
    event = Event(
        "account.password_reset.requested", "E", entity_type="email", detail={"email_hash": hashed}
    )
    auth0, database, email = auth0_of(request), ctx.database, body.email

    async def ask_auth0() -> None:
        outcome = event
        try:
            await auth0.request_password_reset(email)
        except AppError as error:
            logger.warning("password reset email not requested: Auth0 %d", error.status)
            outcome = replace(event, outcome="failed", reason=f"auth0: {error.status}")
        await record_independently(database, actor, outcome)

    account.after_response.spawn(ask_auth0)
    return JSONResponse(RESET_ACCEPTED, status_code=202, headers=NO_STORE)


# --- Verification email ------------------------------------------------------------------


@operation(
    "Ask Auth0 to send the caller a new verification email",
    tags=["account"],
    responses={
        202: Resp(Accepted, "Auth0 accepted the request"),
        429: _problem("Too many requests from this user (see Retry-After)"),
        502: _problem("Auth0 answered something unexpected"),
    },
)
@requires()
async def verification_email(request: Request) -> Response:
    caller = principal(request)
    ctx = context(request)
    limiter = account_of(request).limiter
    event = Event(
        "account.verification_email.requested", "E", entity_type="user", entity_id=caller.sub
    )
    actor = actor_from(request, caller)
    try:
        async with connection(ctx.database) as conn:
            await limiter.take(
                conn,
                [(f"verification_email:user:{caller.sub}", limiter.verification_email_per_user)],
            )
    except AppError as error:
        await record_independently(
            ctx.database, actor, replace(event, outcome="denied", reason=error.detail)
        )
        raise
    try:
        await auth0_of(request).send_verification_email(caller.sub)
    except AppError as error:
        await record_failure(request, caller, event, error)
        raise
    await record_independently(ctx.database, actor, event)
    accepted = {"status": "accepted", "detail": "Auth0 is sending a verification email."}
    return JSONResponse(accepted, status_code=202, headers=NO_STORE)


# --- Sign-out ------------------------------------------------------------------------------


@operation(
    "Sign out: this token and its session stop working on every copy of the service",
    tags=["account"],
    responses={204: Resp(None, "Signed out")},
    description="The token (by `jti`, else by a digest of its claims) and its session "
    '(`sid`) are refused with 401 `invalid_token` ("token revoked") until they expire. '
    "Ending the Auth0 session itself is the frontend's redirect to Auth0's `/v2/logout`.",
)
@requires()
async def logout(request: Request) -> Response:
    caller = principal(request)
    ctx = context(request)
    async with transaction(ctx.database) as conn:
        revoked = await account_of(request).revocations.revoke(conn, caller)
        await record_event(
            conn,
            actor_from(request, caller),
            Event(
                "user.signed_out",
                "E",
                entity_type="session" if caller.sid else "token",
                entity_id=caller.sid or caller.jti,
                detail={"revoked": sorted({kind for kind, *_ in revoked})},
            ),
        )
    return Response(status_code=204, headers=NO_STORE)


# --- Sign-in history ---------------------------------------------------------------------


class LoginsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=512)


class SignIn(BaseModel):
    at: dt.datetime
    event: str
    outcome: Literal["success", "denied", "failed"]
    reason: str | None
    source: Literal["service", "auth0"]
    type: str | None = Field(description="The Auth0 log type code (s, f, fp, fu, ss, slo, ...)")
    ip: str | None
    device: str | None = Field(description="The user agent")
    client_id: str | None
    client_name: str | None


class SignInPage(BaseModel):
    items: list[SignIn]
    next_cursor: str | None


def _sign_in(row: Any) -> dict[str, Any]:
    return {
        "at": row["occurred_at"],
        "event": row["action"],
        "outcome": row["outcome"],
        "reason": row["outcome_reason"],
        "source": "auth0" if row["action"].startswith("idp.") else "service",
        "type": row["type"],
        "ip": row["ip"],
        "device": row["user_agent"],
        "client_id": row["client_id"],
        "client_name": row["client_name"],
    }


def _after(key: bytes, cursor: str, caller: Principal) -> tuple[dt.datetime, int]:
    payload = open_cursor(key, cursor)
    try:
        if payload.get("u") != caller.sub:
            raise ValueError("another user's cursor")
        return dt.datetime.fromisoformat(payload["t"]), int(payload["s"])
    except (KeyError, TypeError, ValueError):
        raise BadRequest(
            "the cursor is not valid",
            errors=[{"field": "cursor", "message": "not a cursor for this list"}],
        ) from None


@operation(
    "The caller's sign-in history (this service's sign-ins and Auth0's login logs)",
    tags=["account"],
    query=LoginsQuery,
    responses={200: SignInPage},
)
@requires()
async def my_logins(request: Request) -> Response:
    caller = principal(request)
    ctx = context(request)
    query = parse_query(request, LoginsQuery)
    key = ctx.settings.derived_key(CURSOR_KEY)
    after = _after(key, query.cursor, caller) if query.cursor else None
    async with connection(ctx.database) as conn:
        rows = await sign_in_history(conn, caller.sub, limit=query.limit + 1, after=after)
    page, more = rows[: query.limit], len(rows) > query.limit
    next_cursor = None
    if more:
        last = page[-1]
        payload = {"u": caller.sub, "t": last["occurred_at"].isoformat(), "s": last["seq"]}
        next_cursor = sign_cursor(key, payload)
    body = {"items": [_sign_in(row) for row in page], "next_cursor": next_cursor}
    return JSONResponse(body, headers=NO_STORE)


routes: list[BaseRoute] = [
    Route("/api/account/password-reset", password_reset, methods=["POST"]),
    Route("/api/account/verification-email", verification_email, methods=["POST"]),
    Route("/api/logout", logout, methods=["POST"]),
    Route("/api/me/logins", my_logins, methods=["GET"]),
]
