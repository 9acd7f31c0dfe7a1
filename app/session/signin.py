"""`GET /auth/login` and `GET /auth/callback`: the authorization-code flow with PKCE, from the
transaction kept server-side to the session started (docs/sessions.md, "Sign-in")."""

from __future__ import annotations

import hmac
import re

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.account import flows
from app.audit.events import scope_of
from app.audit.http import actor_from
from app.auth.tokens import Principal
from app.core.db import transaction
from app.core.errors import BadRequest, Unauthorized
from app.http.context import context
from app.http.openapi import Resp, operation
from app.session import store
from app.session.crypto import cookie_hash, new_secret
from app.session.idtoken import InvalidToken, verify_id_token
from app.session.oauth import GrantRefused
from app.session.resolver import (
    NO_STORE,
    SESSION_COOKIE,
    TX_COOKIE,
    clear_cookie,
    problem,
    resolver_of,
    set_cookie,
)

TRANSACTION_SECONDS = 600  # a sign-in must come back within ten minutes
_PARAM = re.compile(r"[A-Za-z0-9_-]{1,64}")  # organization and connection names
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")
_MAX_RETURN_TO = 2048


# --- Sign-in ---------------------------------------------------------------------------------


class LoginQuery(BaseModel):
    """`GET /auth/login`: where to go afterwards and what to ask the tenant for."""

    model_config = ConfigDict(extra="forbid")

    return_to: str = Field(default="/", description="A path on this site, like /patients")
    screen_hint: str | None = Field(default=None, description="`signup` opens the sign-up form")
    organization: str | None = Field(default=None, description="An Auth0 organization id")
    connection: str | None = Field(default=None, description="e.g. google-oauth2")


def relative_path(value: str) -> bool:
    """A path on this site: starts with one `/`, no scheme, host, backslash or control."""
    return (
        0 < len(value) <= _MAX_RETURN_TO
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and value.isprintable()
        and " " not in value
    )


def _login_params(request: Request) -> tuple[str, dict[str, str]]:
    params = request.query_params
    errors: list[dict[str, str]] = []
    for name in params:
        if name not in LoginQuery.model_fields:
            errors.append({"field": name, "message": "unknown parameter"})
        elif len(params.getlist(name)) > 1:
            errors.append({"field": name, "message": "repeated"})
    return_to = params.get("return_to", "/")
    if not relative_path(return_to):
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
    if errors:
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
    service = resolver_of(request).service
    tx_cookie, state, nonce, verifier = new_secret(), new_secret(), new_secret(), new_secret()
    hashed = cookie_hash(tx_cookie)
    assert hashed is not None
    async with transaction(context(request).database) as conn:
        await store.insert_transaction(
            conn,
            hashed,
            state=state,
            nonce=nonce,
            code_verifier=service.box.seal(verifier),
            return_to=return_to,
            seconds=TRANSACTION_SECONDS,
        )
    url = service.oauth.authorization_url(
        state=state, nonce=nonce, code_verifier=verifier, extra=extra
    )
    response = RedirectResponse(url, status_code=302, headers=NO_STORE)
    response.headers["Set-Cookie"] = set_cookie(TX_COOKIE, tx_cookie, TRANSACTION_SECONDS)
    return response


class _CallbackFailed(BadRequest):
    """400 at the callback; the response also clears the transaction cookie."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers.update(NO_STORE)
        self.headers["Set-Cookie"] = clear_cookie(TX_COOKIE)


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
    params = request.query_params
    ctx = context(request)
    service = resolver_of(request).service
    value = request.cookies.get(TX_COOKIE)
    hashed = cookie_hash(value) if value else None
    if hashed is None:
        raise _CallbackFailed("no sign-in is in progress in this browser")
    async with transaction(ctx.database) as conn:
        tx = await store.take_transaction(conn, hashed)  # used once, whatever happens next
    if tx is None:
        raise _CallbackFailed("the sign-in is unknown or was already completed")
    if not tx.live:
        raise _CallbackFailed("the sign-in took too long; start again")
    state = params.get("state", "")
    if not hmac.compare_digest(state.encode(), tx.state.encode()):
        raise _CallbackFailed("the state does not match this browser's sign-in")
    error = params.get("error")
    if error is not None:
        reason = error if _ERROR_CODE.fullmatch(error) else "error"
        raise _CallbackFailed(f"the identity provider did not sign you in ({reason})")
    code = params.get("code")
    if not code or len(code) > 512:
        raise _CallbackFailed("the callback has no authorization code")
    try:
        tokens = await service.oauth.exchange_code(code, service.box.open(tx.code_verifier))
    except GrantRefused as exc:
        raise _CallbackFailed(f"the identity provider refused the code ({exc.error})") from None
    if tokens.id_token is None:
        raise _CallbackFailed("the identity provider sent no ID token")
    client_id = ctx.settings.sessions.client_id
    assert client_id is not None
    try:
        claims = await verify_id_token(
            ctx.verifier, tokens.id_token, client_id=client_id, nonce=tx.nonce
        )
    except InvalidToken as exc:
        raise _CallbackFailed(f"the ID token is not valid: {exc.reason}") from None
    try:
        caller: Principal = await ctx.verifier.verify_access_token(tokens.access_token)
    except Unauthorized as exc:
        raise _CallbackFailed(f"the access token is not valid: {exc.detail}") from None
    if caller.sub != claims["sub"]:
        raise _CallbackFailed("the ID token and the access token name different users")
    actor = actor_from(request, caller)
    # Sign-up and sign-in recorded as flows 1 and 2 record them (app/account/flows.py).
    await flows.sign_up(ctx.database, actor, caller)
    await flows.sign_in(ctx.database, actor, caller)
    sid = claims.get("sid") if isinstance(claims.get("sid"), str) else caller.sid
    cookie = await service.create(
        actor,
        sub=caller.sub,
        sid=sid,
        scope=scope_of(caller),
        tokens=tokens,
    )
    response = RedirectResponse(tx.return_to, status_code=302, headers=NO_STORE)
    response.headers.append("Set-Cookie", clear_cookie(TX_COOKIE))
    response.headers.append(
        "Set-Cookie", set_cookie(SESSION_COOKIE, cookie, int(service.absolute_seconds))
    )
    return response
