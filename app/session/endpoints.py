"""`/auth/*`: the session, sign-out and back-channel logout here, sign-in in
app/session/signin.py; `routes` lists all five.

Mounted only when SESSION_CLIENT_ID is set (app/main.py), so with cookie mode off every
`/auth/*` path is a 404. docs/sessions.md walks through the flows.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from urllib.parse import parse_qs, urlencode

from jose import jwt
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.core.db import transaction
from app.core.errors import AppError, BadRequest, UnsupportedMediaType
from app.http.bodies import JSONResponse
from app.http.context import context
from app.http.openapi import Resp, operation
from app.session import store
from app.session.idtoken import InvalidToken, replay_window_end, verify_logout_token
from app.session.resolver import (
    NO_STORE,
    SESSION_COOKIE,
    base_actor,
    clear_cookie,
    problem,
    resolver_of,
)
from app.session.signin import callback, login

logger = logging.getLogger(__name__)

_MAX_LOGOUT_FORM = 16 * 1024
_CSRF_HEADER = ("X-CSRF", True, "Must be 1 on every cookie-authenticated request")
_COOKIE_ERRORS = {
    401: problem("No live session: no, an unknown or an expired cookie (which is cleared)"),
    403: problem("X-CSRF: 1 is missing, or the request is cross-site"),
}


# --- The session ------------------------------------------------------------------------------


class SessionUser(BaseModel):
    sub: str
    name: str | None
    email: str | None
    picture: str | None
    email_verified: bool | None


class SessionInfo(BaseModel):
    user: SessionUser
    idle_expires_at: dt.datetime = Field(description="Ends unless used before then")
    absolute_expires_at: dt.datetime = Field(description="Ends then, used or not")


def _user(id_token: str, sub: str) -> dict[str, Any]:
    # Verified when it was stored (or received over the tenant's TLS at a refresh).
    claims = jwt.get_unverified_claims(id_token)

    def text(name: str) -> str | None:
        value = claims.get(name)
        return value if isinstance(value, str) else None

    verified = claims.get("email_verified")
    return {
        "sub": sub,
        "name": text("name"),
        "email": text("email"),
        "picture": text("picture"),
        "email_verified": verified if isinstance(verified, bool) else None,
    }


@operation(
    "The signed-in user and the session's expiry times (never a token)",
    tags=["session"],
    request_headers=[_CSRF_HEADER],
    responses={200: SessionInfo, **_COOKIE_ERRORS},
)
async def session_info(request: Request) -> Response:
    found = await resolver_of(request).session(request, refresh=False)
    body = {
        "user": _user(found.id_token, found.sub),
        "idle_expires_at": found.idle_expires(),
        "absolute_expires_at": found.absolute_expires(),
    }
    return JSONResponse(body, headers=NO_STORE)


# --- Sign-out ---------------------------------------------------------------------------------


class LogoutAnswer(BaseModel):
    logout_url: str = Field(description="Send the browser here to end the tenant's session too")


@operation(
    "Sign out: end the session, revoke its refresh token, clear the cookie",
    tags=["session"],
    request_headers=[_CSRF_HEADER],
    responses={200: LogoutAnswer, **_COOKIE_ERRORS},
    description="The answer's `logout_url` carries the ID token as `id_token_hint`, as "
    "OpenID Connect RP-Initiated Logout asks.",
)
async def logout(request: Request) -> Response:
    sessions = resolver_of(request)
    found = await sessions.session(request, refresh=False)
    service = sessions.service
    await service.end(found.id, base_actor(request), "logout", action="user.signed_out")
    await service.revoke_quietly(found.refresh_token)
    settings = context(request).settings
    query = urlencode(
        {
            "id_token_hint": found.id_token,
            "post_logout_redirect_uri": f"{settings.server.public_url}/",
            "client_id": settings.sessions.client_id,
        }
    )
    body = {"logout_url": f"{settings.auth0.tenant_url}/oidc/logout?{query}"}
    response = JSONResponse(body, headers=NO_STORE)
    response.headers["Set-Cookie"] = clear_cookie(SESSION_COOKIE)
    return response


@operation(
    "OpenID Connect Back-Channel Logout: the tenant ends sessions by sub and/or sid",
    tags=["session"],
    responses={
        200: Resp(None, "The matching sessions have ended (if there were any)"),
        400: problem("The logout token is missing or not valid"),
        415: problem("Not a form"),
    },
)
async def backchannel_logout(request: Request) -> Response:
    ctx = context(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("send the logout token as a form (logout_token=...)")
    raw = await request.body()
    if len(raw) > _MAX_LOGOUT_FORM:
        raise _logout_refused("the form is too large")
    fields = parse_qs(raw.decode("latin-1"), max_num_fields=8)
    tokens = fields.get("logout_token", [])
    if len(tokens) != 1 or not tokens[0]:
        raise _logout_refused("the form must have exactly one logout_token")
    token = tokens[0]
    client_id = ctx.settings.sessions.client_id
    assert client_id is not None
    try:
        claims = await verify_logout_token(ctx.verifier, token, client_id=client_id)
    except InvalidToken as exc:
        raise _logout_refused(f"the logout token is not valid: {exc.reason}") from None
    sub = claims.get("sub") if isinstance(claims.get("sub"), str) else None
    sid = claims.get("sid") if isinstance(claims.get("sid"), str) else None
    until = replay_window_end(claims, ctx.settings.auth.leeway_seconds)
    async with transaction(ctx.database) as conn:
        if not await store.remember_jti(conn, claims["jti"], until):
            raise _logout_refused("the logout token was already used")
        ended = await resolver_of(request).service.end_matching(
            conn, base_actor(request), sub=sub, sid=sid
        )
    logger.info("back-channel logout ended %d session(s)", len(ended))
    return Response(status_code=200, headers=NO_STORE)


def _logout_refused(detail: str) -> AppError:
    error = BadRequest(detail)
    error.headers.update(NO_STORE)
    return error


routes: list[BaseRoute] = [
    Route("/auth/login", login, methods=["GET"]),
    Route("/auth/callback", callback, methods=["GET"]),
    Route("/auth/session", session_info, methods=["GET"]),
    Route("/auth/logout", logout, methods=["POST"]),
    Route("/auth/backchannel-logout", backchannel_logout, methods=["POST"]),
]
