"""`/auth/*`, the cookie mode's HTTP handlers: each parses, makes one call to
app/session/service.py and sets the cookies; `routes` lists all five.

Mounted only when SESSION_CLIENT_ID is set (app/main.py), so with cookie mode off every
`/auth/*` path is a 404. docs/sessions.md walks through the flows.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from app.core.errors import AppError, BadRequest, UnsupportedMediaType
from app.http.bodies import JSONResponse
from app.http.openapi import Problem, Resp, operation
from app.ratelimit.middleware import client_key
from app.session import service
from app.session.cookies import NO_STORE, SESSION_COOKIE, TX_COOKIE, clear_cookie, set_cookie
from app.session.resolver import base_actor, live_session
from app.session.runtime import sessions_of
from app.session.schemas import LoginQuery, LogoutAnswer, SessionInfo, normalise_return_to

_PARAM = re.compile(r"[A-Za-z0-9_-]{1,64}")  # organization and connection names
_MAX_LOGOUT_FORM = 16 * 1024
_MAX_LOGOUT_FIELDS = 8
_CSRF_HEADER = ("X-CSRF", True, "Must be 1 on every cookie-authenticated request")


def problem(description: str) -> Resp:
    """An error response of `/auth/*`, for `/openapi.json`."""
    return Resp(Problem, description, media_type="application/problem+json")


_COOKIE_ERRORS = {
    401: problem("No live session: no, an unknown or an expired cookie (which is cleared)"),
    403: problem("X-CSRF: 1 is missing, or the request is cross-site"),
}


def _refused(error: AppError, *, clear: str | None = None) -> AppError:
    """`error`, never cached, clearing the cookie named `clear`."""
    error.headers.update(NO_STORE)
    if clear is not None:
        error.headers["Set-Cookie"] = clear_cookie(clear)
    return error


# --- Sign-in ---------------------------------------------------------------------------------


def _login_params(request: Request) -> tuple[str, dict[str, str]]:
    """`return_to` and what to ask the tenant for, or a 400 naming every bad parameter."""
    params = request.query_params
    errors: list[dict[str, str]] = []
    for name in params:
        if name not in LoginQuery.model_fields:
            errors.append({"field": name, "message": "unknown parameter"})
        elif len(params.getlist(name)) > 1:
            errors.append({"field": name, "message": "repeated"})
    return_to = normalise_return_to(params.get("return_to", "/"))
    if return_to is None:
        errors.append({"field": "return_to", "message": "must be a path on this site, like /x"})
    extra: dict[str, str] = {}
    hint = params.get("screen_hint")
    if hint is not None:
        if hint != "signup":
            errors.append({"field": "screen_hint", "message": "only signup"})
        extra["screen_hint"] = hint
    for name in ("organization", "connection"):
        value = params.get(name)
        if value is not None:
            if not _PARAM.fullmatch(value):
                errors.append({"field": name, "message": "1-64 of A-Z a-z 0-9 _ -"})
            extra[name] = value
    if errors or return_to is None:
        raise BadRequest("the sign-in request is invalid", errors=errors)
    return return_to, extra


@operation(
    "Sign in: redirect to the tenant's login (code flow, PKCE S256, state, nonce)",
    tags=["session"],
    query=LoginQuery,
    responses={302: Resp(None, "To the tenant's /authorize", headers=("Location", "Set-Cookie"))},
)
async def login(request: Request) -> Response:
    return_to, extra = _login_params(request)
    address = client_key(request.client.host) if request.client else None
    started = await service.begin_sign_in(sessions_of(request), return_to, extra, address)
    response = RedirectResponse(started.url, status_code=302, headers=NO_STORE)
    response.headers["Set-Cookie"] = set_cookie(TX_COOKIE, started.tx_cookie, started.max_age)
    return response


@operation(
    "Sign-in callback: check the state, exchange the code, start the session",
    tags=["session"],
    responses={
        302: Resp(None, "Signed in: to return_to, with the session cookie", headers=("Location",)),
        400: problem("An error from the tenant, an unknown, used or expired state, a bad token"),
        503: problem("The tenant cannot be reached (see Retry-After)"),
    },
)
async def callback(request: Request) -> Response:
    tx_cookie = request.cookies.get(TX_COOKIE)
    try:
        signed_in = await service.complete_sign_in(
            sessions_of(request),
            tx_cookie,
            request.query_params,
            base_actor(request),
            session_cookie=request.cookies.get(SESSION_COOKIE),
        )
    except service.SignInFailed as exc:
        raise _refused(BadRequest(exc.reason), clear=TX_COOKIE) from None
    response = RedirectResponse(signed_in.return_to, status_code=302, headers=NO_STORE)
    response.headers.append("Set-Cookie", clear_cookie(TX_COOKIE))
    cookie = set_cookie(SESSION_COOKIE, signed_in.cookie, signed_in.max_age)
    response.headers.append("Set-Cookie", cookie)
    return response


# --- The session and sign-out ------------------------------------------------------------------


@operation(
    "The signed-in user and the session's expiry times (never a token)",
    tags=["session"],
    request_headers=[_CSRF_HEADER],
    responses={200: SessionInfo, **_COOKIE_ERRORS},
)
async def session_info(request: Request) -> Response:
    found = await live_session(request, sessions_of(request), refresh=False)
    body = {
        "user": service.session_user(found),
        "idle_expires_at": found.idle_expires(),
        "absolute_expires_at": found.absolute_expires(),
    }
    return JSONResponse(body, headers=NO_STORE)


@operation(
    "Sign out: end the session, revoke its refresh token, clear the cookie",
    tags=["session"],
    request_headers=[_CSRF_HEADER],
    responses={200: LogoutAnswer, **_COOKIE_ERRORS},
    description="The answer's `logout_url` carries the ID token as `id_token_hint`, as "
    "OpenID Connect RP-Initiated Logout asks.",
)
async def logout(request: Request) -> Response:
    runtime = sessions_of(request)
    found = await live_session(request, runtime, refresh=False)
    logout_url = await service.sign_out(runtime, found, base_actor(request))
    response = JSONResponse({"logout_url": logout_url}, headers=NO_STORE)
    response.headers["Set-Cookie"] = clear_cookie(SESSION_COOKIE)
    return response


# --- Back-channel logout -----------------------------------------------------------------------


async def _logout_token(request: Request) -> str:
    """The form's one `logout_token`, or a 400 (a 415 when the body is not a form)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("send the logout token as a form (logout_token=...)")
    raw = await request.body()
    if len(raw) > _MAX_LOGOUT_FORM:
        raise _refused(BadRequest("the form is too large"))
    try:
        form = parse_qs(raw.decode("latin-1"), max_num_fields=_MAX_LOGOUT_FIELDS)
    except ValueError:  # more fields than a logout form has: refused before any is parsed
        raise _refused(BadRequest("the form has too many fields")) from None
    tokens = form.get("logout_token", [])
    if len(tokens) != 1 or not tokens[0]:
        raise _refused(BadRequest("the form must have exactly one logout_token"))
    return tokens[0]


@operation(
    "OpenID Connect Back-Channel Logout: the tenant ends sessions by sub and/or sid",
    tags=["session"],
    responses={
        200: Resp(None, "The matching sessions have ended (if there were any)"),
        400: problem("The form has too many fields, or its logout token is missing or not valid"),
        415: problem("Not a form"),
    },
)
async def backchannel_logout(request: Request) -> Response:
    token = await _logout_token(request)
    try:
        await service.end_by_logout_token(sessions_of(request), token, base_actor(request))
    except service.LogoutRefused as exc:
        raise _refused(BadRequest(exc.reason)) from None
    return Response(status_code=200, headers=NO_STORE)


routes: list[BaseRoute] = [
    Route("/auth/login", login, methods=["GET"]),
    Route("/auth/callback", callback, methods=["GET"]),
    Route("/auth/session", session_info, methods=["GET"]),
    Route("/auth/logout", logout, methods=["POST"]),
    Route("/auth/backchannel-logout", backchannel_logout, methods=["POST"]),
]
