"""The flows of cookie mode, one call each for the `/auth/*` handlers (docs/sessions.md):
sign-in begun and completed, the signed-in user, sign-out, and the back-channel logout.

A flow either returns what the handler answers with or raises one typed refusal whose
`reason` is safe to show (`SignInFailed`, `LogoutRefused`); outages (`UpstreamUnavailable`)
pass through as the error family's 503.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from jose import jwt

from app.account import service as account
from app.audit.events import Actor, scope_of
from app.auth.tokens import Principal
from app.core.db import transaction
from app.core.errors import Unauthorized
from app.session import endings, lifecycle, repository
from app.session.cache import Session
from app.session.crypto import cookie_hash, new_cookie, new_secret
from app.session.dpop import SessionKey
from app.session.idtoken import (
    InvalidToken,
    replay_window_end,
    verify_id_token,
    verify_logout_token,
)
from app.session.oauth import GrantRefused
from app.session.runtime import SessionRuntime

logger = logging.getLogger(__name__)

TRANSACTION_SECONDS = 600  # a sign-in must come back within ten minutes
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


class SignInFailed(Exception):
    """The callback cannot start a session; `reason` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LogoutRefused(Exception):
    """A back-channel logout token that ends nothing; `reason` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SignInStarted:
    tx_cookie: str  # binds the sign-in to this browser (a secret)
    url: str  # the tenant's /authorize
    max_age: int


@dataclass(frozen=True, slots=True)
class SignedIn:
    cookie: str  # the session cookie's value (a secret)
    return_to: str
    max_age: int


# --- Sign-in ---------------------------------------------------------------------------------


async def begin_sign_in(
    runtime: SessionRuntime, return_to: str, extra: Mapping[str, str], address: str | None
) -> SignInStarted:
    """Keep the sign-in transaction (state, nonce, the PKCE verifier sealed) under the hash of
    a new transaction cookie, and the tenant URL the browser goes to.

    Anyone may start sign-ins, so they are bounded: past SESSION_MAX_PENDING_PER_ADDRESS
    for the client's `address` (an IPv4 address or IPv6 /64), or SESSION_MAX_PENDING in
    all, the oldest are evicted; their callbacks then ask the user to sign in again."""
    (tx_cookie, hashed), state, nonce, verifier = (
        new_cookie(),
        new_secret(),
        new_secret(),
        new_secret(),
    )
    async with transaction(runtime.database) as conn:
        await repository.insert_transaction(
            conn,
            hashed,
            state=state,
            nonce=nonce,
            code_verifier=runtime.box.seal(verifier),
            return_to=return_to,
            seconds=TRANSACTION_SECONDS,
            address=address,
        )
        bounds = runtime.settings.sessions
        _, oldest = await repository.evict_transactions(
            conn,
            hashed,
            address=address,
            per_address=bounds.max_pending_per_address,
            total=bounds.max_pending,
        )
    if oldest:  # sign-ins from everywhere are being pushed out: a flood, or a low bound
        logger.warning("%d pending sign-in(s) evicted at SESSION_MAX_PENDING", oldest)
    url = runtime.oauth.authorization_url(
        state=state, nonce=nonce, code_verifier=verifier, extra=dict(extra)
    )
    return SignInStarted(tx_cookie, url, TRANSACTION_SECONDS)


async def complete_sign_in(
    runtime: SessionRuntime,
    tx_cookie: str | None,
    params: Mapping[str, str],
    actor: Actor,
    session_cookie: str | None = None,
) -> SignedIn:
    """The callback: the transaction taken (once, whatever follows), the state matched, the
    code exchanged, both tokens checked, sign-up and sign-in recorded as flows 1 and 2 record
    them, and the session started, ending the one of `session_cookie` (the browser's previous
    session, whoever's it was). `SignInFailed` for every refusal, which ends nothing."""
    hashed = cookie_hash(tx_cookie) if tx_cookie else None
    if hashed is None:
        raise SignInFailed("no sign-in is in progress in this browser")
    async with transaction(runtime.database) as conn:
        tx = await repository.take_transaction(conn, hashed)
    if tx is None:
        raise SignInFailed("the sign-in is unknown or was already completed")
    if not tx.live:
        raise SignInFailed("the sign-in took too long; start again")
    if not hmac.compare_digest(params.get("state", "").encode(), tx.state.encode()):
        raise SignInFailed("the state does not match this browser's sign-in")
    error = params.get("error")
    if error is not None:
        reason = error if _ERROR_CODE.fullmatch(error) else "error"
        raise SignInFailed(f"the identity provider did not sign you in ({reason})")
    code = params.get("code")
    if not code or len(code) > 512:
        raise SignInFailed("the callback has no authorization code")
    key = SessionKey.generate() if runtime.settings.sessions.dpop else None
    try:
        tokens = await runtime.oauth.exchange_code(code, runtime.box.open(tx.code_verifier), key)
    except GrantRefused as exc:
        raise SignInFailed(f"the identity provider refused the code ({exc.error})") from None
    if tokens.id_token is None:
        raise SignInFailed("the identity provider sent no ID token")
    caller, claims = await _signed_in_user(runtime, tokens.access_token, tokens.id_token, tx.nonce)
    if key is not None and not (tokens.bound and caller.jkt == key.thumbprint):
        # SESSION_DPOP promises bound tokens; the API in Auth0 must allow DPoP for that.
        raise SignInFailed("the identity provider did not bind the tokens to the session (DPoP)")
    actor = actor.acting_as(caller)
    await account.sign_up(runtime.database, actor, caller)
    await account.sign_in(runtime.database, actor, caller)
    sid = claims.get("sid") if isinstance(claims.get("sid"), str) else caller.sid
    cookie = await lifecycle.create(
        runtime,
        actor,
        sub=caller.sub,
        sid=sid,
        scope=scope_of(caller),
        tokens=tokens,
        replacing=cookie_hash(session_cookie) if session_cookie else None,
        dpop_key=key,
    )
    return SignedIn(cookie, tx.return_to, int(runtime.absolute_seconds))


async def _signed_in_user(
    runtime: SessionRuntime, access_token: str, id_token: str, nonce: str
) -> tuple[Principal, dict[str, Any]]:
    """The caller the access token names, and the ID token's claims: both valid, one user."""
    try:
        claims = await verify_id_token(
            runtime.verifier, id_token, client_id=runtime.client_id, nonce=nonce
        )
    except InvalidToken as exc:
        raise SignInFailed(f"the ID token is not valid: {exc.reason}") from None
    try:
        caller = await runtime.verifier.verify_access_token(access_token)
    except Unauthorized as exc:
        raise SignInFailed(f"the access token is not valid: {exc.detail}") from None
    if caller.sub != claims["sub"]:
        raise SignInFailed("the ID token and the access token name different users")
    return caller, claims


# --- The session and sign-out ------------------------------------------------------------------


def session_user(session: Session) -> dict[str, Any]:
    """Who the session is, from its ID token: never a token itself."""
    # Verified when it was stored (or received over the tenant's TLS at a refresh).
    claims = jwt.get_unverified_claims(session.id_token)

    def text(name: str) -> str | None:
        value = claims.get(name)
        return value if isinstance(value, str) else None

    verified = claims.get("email_verified")
    return {
        "sub": session.sub,
        "name": text("name"),
        "email": text("email"),
        "picture": text("picture"),
        "email_verified": verified if isinstance(verified, bool) else None,
    }


async def sign_out(runtime: SessionRuntime, session: Session, actor: Actor) -> str:
    """End the session (recorded as `user.signed_out`), revoke its refresh token at the
    tenant (a failure there is logged; the session is gone either way), and the tenant's
    logout URL, which carries the ID token as `id_token_hint` (OIDC RP-Initiated Logout)."""
    await endings.end(runtime, session.id, actor, "logout", action="user.signed_out")
    await endings.revoke_quietly(runtime, session.refresh_token)
    settings = runtime.settings
    query = urlencode(
        {
            "id_token_hint": session.id_token,
            "post_logout_redirect_uri": runtime.logout_return_url,
            "client_id": runtime.client_id,
        }
    )
    return f"{settings.auth0.tenant_url}/oidc/logout?{query}"


# --- Back-channel logout -----------------------------------------------------------------------


async def end_by_logout_token(runtime: SessionRuntime, token: str, actor: Actor) -> int:
    """OpenID Connect Back-Channel Logout: the logout token checked and its `jti` remembered
    (never accepted twice), and every session of its `sub` and/or `sid` ended on every copy.
    How many ended; `LogoutRefused` when the token is not valid or was used."""
    try:
        claims = await verify_logout_token(runtime.verifier, token, client_id=runtime.client_id)
    except InvalidToken as exc:
        raise LogoutRefused(f"the logout token is not valid: {exc.reason}") from None
    sub = claims.get("sub") if isinstance(claims.get("sub"), str) else None
    sid = claims.get("sid") if isinstance(claims.get("sid"), str) else None
    until = replay_window_end(claims, runtime.settings.auth.leeway_seconds)
    async with transaction(runtime.database) as conn:
        if not await repository.remember_jti(conn, claims["jti"], until):
            raise LogoutRefused("the logout token was already used")
        ended = await endings.end_matching(runtime, conn, actor, sub=sub, sid=sid)
    logger.info("back-channel logout ended %d session(s)", len(ended))
    return len(ended)
