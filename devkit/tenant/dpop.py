"""DPoP at the stand-in tenant's token endpoint, as Auth0 does it (RFC 9449 section 5).

A code or refresh grant that carries a `DPoP` proof gets tokens bound to the proof's key:
`token_type: DPoP` and the access token's `cnf.jkt`. Auth0 may demand a server nonce: a
proof without one (or with an old one) is answered 400 `use_dpop_nonce` with the nonce to
use in `DPoP-Nonce`; so does the stand-in while `DPoPState.require_nonce` (the default),
rotating the nonce every `nonce_seconds` and accepting the previous one. Every answer
carries the current nonce. A proof is accepted once (`jti`), within five minutes of its
`iat`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import warnings
from typing import Any

import orjson
from starlette.responses import JSONResponse

from app.auth.proofkeys import thumbprint
from app.auth.uris import normalize_uri
from devkit.tenant.state import DPoPState

with warnings.catch_warnings():
    import authlib.deprecate

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.jose import JsonWebKey, JsonWebSignature

_JWS = JsonWebSignature(algorithms=["ES256", "EdDSA", "RS256"])
IAT_WINDOW_SECONDS = 300
_PRIVATE = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def current_nonce(state: DPoPState, offset: int = 0) -> str:
    period = int(time.time() // state.nonce_seconds) + offset
    mac = hmac.new(state.nonce_key, str(period).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode()


def dpop_error(state: DPoPState, error: str, description: str) -> JSONResponse:
    headers = {"Cache-Control": "no-store", "DPoP-Nonce": current_nonce(state)}
    return JSONResponse({"error": error, "error_description": description}, 400, headers)


def check_proof(state: DPoPState, proofs: list[str], token_url: str) -> str | JSONResponse:
    """The thumbprint of the key a token request's proof is signed with, or the 400 the
    tenant answers instead."""
    if len(proofs) != 1:
        return dpop_error(state, "invalid_dpop_proof", "Exactly one DPoP proof is required")
    try:
        header: dict[str, Any] = orjson.loads(_segment(proofs[0].split(".")[0]))
        jwk = header["jwk"]
        if header.get("typ") != "dpop+jwt" or _PRIVATE & set(jwk):
            raise ValueError("not a DPoP proof")
        claims: dict[str, Any] = orjson.loads(
            _JWS.deserialize_compact(proofs[0], JsonWebKey.import_key(jwk))["payload"]
        )
        jkt = thumbprint(jwk)
    except Exception:  # anything that is not a well-formed, well-signed proof
        return dpop_error(state, "invalid_dpop_proof", "Invalid DPoP proof")
    now = time.time()
    htu = normalize_uri(str(claims.get("htu", "")))
    iat, jti = claims.get("iat"), claims.get("jti")
    if claims.get("htm") != "POST" or htu is None or htu != normalize_uri(token_url):
        return dpop_error(state, "invalid_dpop_proof", "DPoP proof htm or htu mismatch")
    if not isinstance(iat, int | float) or abs(now - iat) > IAT_WINDOW_SECONDS:
        return dpop_error(state, "invalid_dpop_proof", "DPoP proof iat is not recent")
    if not isinstance(jti, str) or not jti or jti in state.seen:
        return dpop_error(state, "invalid_dpop_proof", "DPoP proof jti was already used")
    nonce = claims.get("nonce")
    if state.require_nonce and nonce not in (current_nonce(state), current_nonce(state, -1)):
        return dpop_error(
            state, "use_dpop_nonce", "Authorization server requires nonce in DPoP proof"
        )
    state.seen = {j: t for j, t in state.seen.items() if t > now}
    state.seen[jti] = now + 2 * IAT_WINDOW_SECONDS
    return jkt


def _segment(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
