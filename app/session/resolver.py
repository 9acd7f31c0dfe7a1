"""The session cookie on a request: which session it names, CSRF checks, and the cookies set.

`SessionResolver` is what `AppContext.sessions` holds. `requires` (app/auth/requires.py)
asks it for the access token of a request that carries the session cookie and no
`Authorization` header, and then takes exactly the bearer path.

CSRF: the cookie is `SameSite=Lax`, and every cookie-authenticated call to `/api/*`,
`/auth/session` and `/auth/logout` must also send `X-CSRF: 1`, a header a cross-site form
or image cannot send and a cross-site `fetch` cannot send without a CORS preflight that
this service does not grant; `Sec-Fetch-Site: cross-site` is refused outright.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection, Request

from app.audit.events import Actor
from app.audit.http import actor_from
from app.core.errors import AppError, Forbidden, Unauthorized
from app.http.context import context
from app.http.openapi import Problem, Resp
from app.session.cache import Session
from app.session.crypto import cookie_hash
from app.session.service import SessionInvalid, SessionService

SESSION_COOKIE = "__Host-bff_session"
TX_COOKIE = "__Host-bff_tx"
CSRF_HEADER = "x-csrf"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def problem(description: str) -> Resp:
    """An error response of `/auth/*`, for `/openapi.json`."""
    return Resp(Problem, description, media_type="application/problem+json")


def resolver_of(request: Request) -> SessionResolver:
    """The process's `SessionResolver` (wired by app/main.py when cookie mode is on)."""
    found = context(request).sessions
    if found is None:
        raise RuntimeError("cookie sessions are not wired into the app context")
    return found


def set_cookie(name: str, value: str, max_age: int) -> str:
    """A `__Host-` cookie: Secure, HttpOnly, SameSite=Lax, Path=/, no Domain."""
    return f"{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Lax"


def clear_cookie(name: str) -> str:
    return f"{name}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax"


class SessionRequired(Unauthorized):
    """401 for a session cookie that names no live session; the response clears the cookie."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, error="invalid_token", realm="api")
        self.headers["Set-Cookie"] = clear_cookie(SESSION_COOKIE)


def check_csrf(conn: HTTPConnection) -> None:
    """403 for a cookie-authenticated request a cross-site page could have made."""
    if conn.headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        raise Forbidden("cross-site requests may not use the session cookie")
    if conn.headers.get(CSRF_HEADER) != "1":
        raise Forbidden("a request with the session cookie must send the header X-CSRF: 1")


def base_actor(request: Request) -> Actor:
    """The request's actor before it is known whose session it is."""
    return actor_from(request, None)


class SessionResolver:
    """Cookie → live session → access token; one per process, around the `SessionService`."""

    def __init__(self, service: SessionService) -> None:
        self.service = service

    def has_cookie(self, conn: HTTPConnection) -> bool:
        return SESSION_COOKIE in conn.cookies

    async def session(self, request: Request, *, refresh: bool = True) -> Session:
        """The request's live session (CSRF checked before any lookup), or a 401 that clears
        the cookie; 503 when a refresh is due and the tenant is down (the session is kept)."""
        value = request.cookies.get(SESSION_COOKIE)
        if not value:
            raise Unauthorized("sign in first: no session cookie", error=None)
        check_csrf(request)  # before the cookie is even looked up
        hashed = cookie_hash(value)
        if hashed is None:
            raise SessionRequired("the session cookie is not valid")
        try:
            found = await self.service.current(hashed, base_actor(request), refresh=refresh)
        except SessionInvalid as exc:
            raise SessionRequired(exc.reason) from None
        request.state.session = found
        return found

    async def access_token(self, request: Request) -> str:
        """The access token `requires` verifies for a cookie-authenticated request."""
        return (await self.session(request)).access_token

    async def refused(self, request: Request, error: AppError) -> None:
        """The session's access token was refused by the verifier (a revoked session, say):
        the session is ended, and the 401 clears the cookie."""
        found: Session | None = getattr(request.state, "session", None)
        if not isinstance(error, Unauthorized) or found is None:
            return
        error.headers["Set-Cookie"] = clear_cookie(SESSION_COOKIE)
        await self.service.end(found.id, base_actor(request), "access_token_refused")
