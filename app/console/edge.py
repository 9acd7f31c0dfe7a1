"""The console at the HTTP edge: who is asking (the cookie session, the token it holds, the
page's permission) and pages rendered from the part's templates under the console's own
Content-Security-Policy.

A page needs the session cookie only (it is `SameSite=Lax`, and a GET changes nothing);
a change is a POST, which must also carry `X-CSRF: 1` (sent by the page's script). No
cookie, or one naming no live session: a redirect to the sign-in with `return_to`. A
signed-in caller without the page's permission gets a 403 page, recorded as a denial like
the API's.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from app.audit.edge import actor_from
from app.audit.events import Actor
from app.auth.requires import AuthRequirement, check_requirement
from app.auth.runtime import auth_of
from app.auth.tokens import Principal
from app.core.errors import Forbidden, Unauthorized
from app.session import lifecycle
from app.session.cache import Session
from app.session.cookies import SESSION_COOKIE, clear_cookie
from app.session.crypto import cookie_hash
from app.session.resolver import check_csrf
from app.session.runtime import sessions_of

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {"Content-Security-Policy": CONSOLE_CSP, "Cache-Control": "no-store"}
Page = Callable[[Request], Awaitable[Response]]


def _utc(value: datetime | None) -> str:
    """A time as the console writes it: UTC, to the second, with the offset."""
    if value is None:
        return ""
    return value.astimezone(UTC).isoformat(sep=" ", timespec="seconds")


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value is not None else ""


templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["utc"] = _utc
templates.env.filters["iso"] = _iso


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in caller of a console page."""

    principal: Principal
    session: Session
    actor: Actor

    def can(self, permission: str) -> bool:
        return permission in self.principal.permissions


def render(
    request: Request, template: str, context: Mapping[str, Any], *, status: int = 200
) -> Response:
    """A page from the console's templates, with its CSP; `viewer` is in every page."""
    values = {"viewer": getattr(request.state, "viewer", None), **context}
    return templates.TemplateResponse(
        request, template, values, status_code=status, headers=PAGE_HEADERS
    )


def viewer(request: Request) -> Viewer:
    """The caller; only valid inside a handler decorated with `page`."""
    found = getattr(request.state, "viewer", None)
    if not isinstance(found, Viewer):
        raise RuntimeError("viewer() used on a route without @page")
    return found


def _sign_in(request: Request, *, clear: bool = False) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = "/auth/login?" + urlencode({"return_to": target})
    response = RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})
    if clear:
        response.headers["Set-Cookie"] = clear_cookie(SESSION_COOKIE)
    return response


async def _signed_in(request: Request) -> Viewer | Response:
    """The caller behind the session cookie, or the redirect to sign in."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return _sign_in(request)
    if request.method not in ("GET", "HEAD"):
        check_csrf(request)  # a change: the page's script sends X-CSRF
    elif request.headers.get("sec-fetch-site", "").lower() == "cross-site" and (
        request.headers.get("sec-fetch-mode", "").lower() != "navigate"
    ):
        raise Forbidden("cross-site requests may not use the session cookie")
    hashed = cookie_hash(value)
    if hashed is None:
        return _sign_in(request, clear=True)
    base = actor_from(request, None)
    try:
        session = await lifecycle.current(sessions_of(request), hashed, base)
    except lifecycle.SessionInvalid:
        return _sign_in(request, clear=True)
    auth = auth_of(request)
    try:
        principal = await auth.verifier.verify_access_token(session.access_token)
    except Unauthorized:
        return _sign_in(request, clear=True)
    if auth.per_user_limit is not None:
        auth.per_user_limit.enforce(principal.sub)
    return Viewer(principal, session, actor_from(request, principal))


def page(*permissions: str) -> Callable[[Page], Page]:
    """A console page (or download, or change) that needs the session and `permissions`
    (all of them); a caller without them gets the 403 page."""
    requirement = AuthRequirement(tuple(permissions))

    def decorator(handler: Page) -> Page:
        @functools.wraps(handler)
        async def wrapper(request: Request) -> Response:
            found = await _signed_in(request)
            if isinstance(found, Response):
                return found
            request.state.viewer = found
            try:
                check_requirement(found.principal, requirement, auth_of(request).policy)
            except Forbidden as error:
                hook = auth_of(request).on_denied
                if hook is not None:
                    await hook(request, found.principal, error)
                context = {"title": "Not allowed", "needed": permissions}
                return render(request, "forbidden.html", context, status=403)
            return await handler(request)

        return wrapper

    return decorator
