"""The session cookie on a request: which live session it names, and the CSRF checks.

`SessionResolver` is the auth part's `CookieSessions` (app/auth/runtime.py): `requires`
asks it for the access token of a request that carries the session cookie and no
`Authorization` header, and then takes exactly the bearer path.

CSRF: the cookie is `SameSite=Lax`, and every cookie-authenticated call to `/api/*`,
`/auth/session` and `/auth/logout` must also send `X-CSRF: 1`, a header a cross-site form
or image cannot send and a cross-site `fetch` cannot send without a CORS preflight that
this service does not grant; `Sec-Fetch-Site: cross-site` is refused outright.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection, Request

from app.audit.edge import actor_from
from app.audit.events import Actor
from app.core.errors import AppError, Forbidden, Unauthorized
from app.session import endings, lifecycle
from app.session.cache import Session
from app.session.cookies import SESSION_COOKIE, clear_cookie
from app.session.crypto import cookie_hash
from app.session.runtime import SessionRuntime

CSRF_HEADER = "x-csrf"


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


async def live_session(
    request: Request, runtime: SessionRuntime, *, refresh: bool = True
) -> Session:
    """The request's live session (CSRF checked before any lookup), or a 401 that clears the
    cookie; 503 when a refresh is due and the tenant is down (the session is kept)."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        raise Unauthorized("sign in first: no session cookie", error=None)
    check_csrf(request)  # before the cookie is even looked up
    hashed = cookie_hash(value)
    if hashed is None:
        raise SessionRequired("the session cookie is not valid")
    try:
        found = await lifecycle.current(runtime, hashed, base_actor(request), refresh=refresh)
    except lifecycle.SessionInvalid as exc:
        raise SessionRequired(exc.reason) from None
    request.state.session = found
    return found


class SessionResolver:
    """Cookie → live session → access token; one per process, around the `SessionRuntime`."""

    def __init__(self, runtime: SessionRuntime) -> None:
        self.runtime = runtime

    def has_cookie(self, conn: HTTPConnection) -> bool:
        return SESSION_COOKIE in conn.cookies

    async def access_token(self, request: Request) -> str:
        return (await live_session(request, self.runtime)).access_token

    async def refused(self, request: Request, error: AppError) -> None:
        """The session's access token was refused by the verifier (a revoked session, say):
        the session is ended, and the 401 clears the cookie."""
        found: Session | None = getattr(request.state, "session", None)
        if not isinstance(error, Unauthorized) or found is None:
            return
        error.headers["Set-Cookie"] = clear_cookie(SESSION_COOKIE)
        await endings.end(self.runtime, found.id, base_actor(request), "access_token_refused")
