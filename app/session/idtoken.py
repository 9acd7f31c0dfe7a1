"""ID tokens (OpenID Connect Core 3.1.3.7) and logout tokens (Back-Channel Logout 1.0, 2.6).

Signatures are checked with the keys of the bearer verifier's own JWKS cache
(app/auth/tokens.py), so one fetch policy covers every token the tenant signs and a key the
tenant withdraws stops all of them at once; the header rules and the signature check are
the verifier's too (`TokenVerifier.signed_claims`). The claim rules are here, each failure
with a reason (never the token) for the 400 it becomes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from app.auth.tokens import MAX_TOKEN_LENGTH, TokenVerifier
from app.core.errors import Unauthorized

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
MAX_LOGOUT_TOKEN_AGE = 300  # seconds; older logout tokens are refused (2.6: "too far away")
_LOGOUT_TYPES = frozenset({"jwt", "logout+jwt", "application/logout+jwt"})
_ID_TYPES = frozenset({"jwt", "application/jwt"})


class InvalidToken(Exception):
    """An ID or logout token we refuse; `reason` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _verified_claims(
    verifier: TokenVerifier, token: str, types: frozenset[str]
) -> dict[str, Any]:
    """The token's claims once the bearer verifier's JWS checks pass (header rules, the key
    from its JWKS cache, the signature); the claim rules are the callers'."""
    if not isinstance(token, str) or not token.isascii() or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed token")
    try:
        claims, _ = await verifier.signed_claims(token.encode(), types)
    except Unauthorized as exc:
        raise InvalidToken(exc.detail) from None
    return claims


def _check_common(
    claims: dict[str, Any], verifier: TokenVerifier, client_id: str, now: float
) -> None:
    settings = verifier.settings
    leeway = settings.auth.leeway_seconds
    if claims.get("iss") != settings.auth0.issuer:
        raise InvalidToken("invalid issuer")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if client_id not in audiences:
        raise InvalidToken("invalid audience")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise InvalidToken("invalid authorized party")
    iat = _time(claims, "iat")
    if iat is None:
        raise InvalidToken("missing iat claim")
    if iat > now + leeway:
        raise InvalidToken("token issued in the future")
    exp = _time(claims, "exp")
    if exp is not None and now >= exp + leeway:
        raise InvalidToken("token expired")
    sub = claims.get("sub")
    if sub is not None and (not isinstance(sub, str) or not 0 < len(sub) <= 255):
        raise InvalidToken("invalid sub claim")
    sid = claims.get("sid")
    if sid is not None and (not isinstance(sid, str) or not 0 < len(sid) <= 255):
        raise InvalidToken("invalid sid claim")


async def verify_id_token(
    verifier: TokenVerifier,
    token: str,
    *,
    client_id: str,
    nonce: str,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The ID token's claims: signed by the tenant, for this client, this sign-in's nonce,
    unexpired, with a subject."""
    claims = await _verified_claims(verifier, token, _ID_TYPES)
    _check_common(claims, verifier, client_id, clock())
    if _time(claims, "exp") is None:
        raise InvalidToken("missing exp claim")
    if not isinstance(claims.get("sub"), str):
        raise InvalidToken("missing sub claim")
    if claims.get("nonce") != nonce:
        raise InvalidToken("invalid nonce")
    return claims


async def verify_logout_token(
    verifier: TokenVerifier,
    token: str,
    *,
    client_id: str,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The logout token's claims (2.6): as an ID token, plus the back-channel event, `sub`
    and/or `sid`, a `jti`, no `nonce`, and an `iat` at most MAX_LOGOUT_TOKEN_AGE old."""
    claims = await _verified_claims(verifier, token, _LOGOUT_TYPES)
    now = clock()
    _check_common(claims, verifier, client_id, now)
    iat = _time(claims, "iat")
    if iat is not None and iat < now - MAX_LOGOUT_TOKEN_AGE - verifier.settings.auth.leeway_seconds:
        raise InvalidToken("token too old")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
        raise InvalidToken("missing back-channel logout event")
    if "nonce" in claims:
        raise InvalidToken("a logout token must not carry a nonce")
    if claims.get("sub") is None and claims.get("sid") is None:
        raise InvalidToken("missing sub and sid claims")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= 255:
        raise InvalidToken("missing jti claim")
    return claims


def replay_window_end(claims: dict[str, Any], leeway: float) -> float:
    """Until when a logout token's `jti` must be remembered: after that its age refuses it."""
    iat = _time(claims, "iat") or time.time()
    return iat + MAX_LOGOUT_TOKEN_AGE + 2 * leeway


def _time(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 <= value <= 2**53:
        raise InvalidToken(f"invalid {name} claim")
    return float(value)
