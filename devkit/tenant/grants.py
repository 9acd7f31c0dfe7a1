"""The stand-in tenant's token grants for the browser login, and what they remember.

`token_grant` serves `POST /oauth/token` for the `authorization_code` grant (PKCE `S256`,
single-use codes valid 60 s) and the `refresh_token` grant with rotation: each refresh
answers a new refresh token, and presenting a rotated one again revokes its whole family
(every token descended from that login). With a DPoP proof (devkit/tenant/dpop.py) the
tokens are bound to its key, and a refresh token so issued is refreshed with that key
only. Status codes and error bodies are Auth0's.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse, Response

from devkit.keys import ALL_PERMISSIONS
from devkit.tenant.dpop import check_proof, current_nonce
from devkit.tenant.state import Login, RefreshToken, TenantState

CODE_TTL_SECONDS = 60
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status, NO_STORE)


def _invalid_grant(description: str) -> JSONResponse:
    return oauth_error(403, "invalid_grant", description)


def client_ok(state: TenantState, body: Mapping[str, Any]) -> bool:
    return body.get("client_id") == state.session_client_id and secrets.compare_digest(
        str(body.get("client_secret", "")), state.session_client_secret
    )


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _tokens(
    state: TenantState,
    login: Login,
    *,
    family: str | None,
    nonce: str | None,
    jkt: str | None = None,
    audience: str | None = None,
) -> dict[str, Any]:
    """The token response: access and ID token, and a refresh token with `offline_access`.
    `audience`: the access token is for that API instead of the login's (a refresh grant
    that named it); the refresh token stays the login's."""
    minter, user = state.minter, state.user(login.sub)
    now, ttl = int(time.time()), state.session_access_token_ttl_seconds
    permissions = list(state.user_permissions.get(login.sub, ALL_PERMISSIONS))
    scopes = login.scope.split()
    access = minter.mint(
        login.sub,
        permissions=permissions,
        aud=[audience or login.audience, f"{minter.issuer}userinfo"],
        azp=login.client_id,
        scope=" ".join(dict.fromkeys([*scopes, *permissions])),
        iat=now,
        exp=now + ttl,
        sid=None,
        org_id=login.org_id,
        email_verified=user.get("email_verified"),
        cnf={"jkt": jkt} if jkt else None,
    )
    answer: dict[str, Any] = {"access_token": access}
    if "openid" in scopes:
        names = ("name", "nickname", "picture", "email", "email_verified", "updated_at")
        profile: dict[str, Any] = {k: user.get(k) for k in names}
        answer["id_token"] = minter.id_token(
            login.sub,
            client_id=login.client_id,
            nonce=nonce,
            sid=login.sid,
            auth_time=login.auth_time,
            org_id=login.org_id,
            **profile,
        )
    if "offline_access" in scopes and family is not None:
        refresh = secrets.token_urlsafe(32)
        state.logins.refresh_tokens[refresh] = RefreshToken(login, family, jkt=jkt)
        answer["refresh_token"] = refresh
    token_type = "DPoP" if jkt else "Bearer"
    return answer | {"token_type": token_type, "expires_in": ttl, "scope": login.scope}


def token_grant(
    state: TenantState, body: dict[str, Any], proofs: list[str], token_url: str
) -> Response:
    """`POST /oauth/token` for the `authorization_code` and `refresh_token` grants, the
    `DPoP` headers it came with, and the URL it was sent to (what a proof's `htu` names).

    Counted by kind (`code_grant`, `refresh_grant`, `refresh_reuse`, and `dpop_grant` or
    `dpop_nonce_challenge` for a request with a proof) next to the request's own
    `oauth_token` count, without counting the request twice in `total`."""
    refreshing = body["grant_type"] == "refresh_token"
    state.counts["refresh_grant" if refreshing else "code_grant"] += 1
    if not client_ok(state, body):
        return oauth_error(401, "invalid_client", "Client authentication failed.")
    jkt: str | None = None
    proofs = proofs if state.dpop.enabled else []
    if proofs:
        checked = check_proof(state.dpop, proofs, token_url)
        if not isinstance(checked, str):
            if b"use_dpop_nonce" in checked.body:
                state.counts["dpop_nonce_challenge"] += 1
            return checked
        jkt = checked
        state.counts["dpop_grant"] += 1
    answer = _grant(state, body, refreshing, jkt)
    if proofs:
        answer.headers["DPoP-Nonce"] = current_nonce(state.dpop)
    return answer


def _grant(state: TenantState, body: dict[str, Any], refreshing: bool, jkt: str | None) -> Response:
    store = state.logins
    if refreshing:
        if not body.get("refresh_token"):
            return oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
        token = store.refresh_tokens.get(str(body["refresh_token"]))
        if token is None or token.login.client_id != body["client_id"]:
            return _invalid_grant("Unknown or invalid refresh token.")
        if token.rotated and token.family not in store.revoked_families:
            state.counts["refresh_reuse"] += 1
            store.revoked_families.add(token.family)
        if token.rotated or token.family in store.revoked_families:
            return _invalid_grant("Unknown or invalid refresh token.")
        if token.jkt is not None and token.jkt != jkt and state.dpop.enabled:
            return _invalid_grant("The DPoP proof's key is not the refresh token's.")
        audience = str(body.get("audience") or token.login.audience)
        if audience != token.login.audience and audience not in state.other_audiences:
            return oauth_error(403, "access_denied", f"Service not found: {audience}")
        token.rotated = True
        if audience != token.login.audience:
            state.counts["audience_grant"] += 1
        tokens = _tokens(
            state, token.login, family=token.family, nonce=None, jkt=jkt, audience=audience
        )
        return JSONResponse(tokens, headers=NO_STORE)
    for name in ("code", "redirect_uri"):
        if not body.get(name):
            return oauth_error(400, "invalid_request", f"Missing required parameter: {name}")
    code = store.codes.pop(str(body["code"]), None)
    if code is None or code.expires_at < time.time() or code.login.client_id != body["client_id"]:
        return _invalid_grant("Invalid authorization code")
    if code.redirect_uri != body["redirect_uri"]:
        return _invalid_grant("Invalid redirect URI")
    if not secrets.compare_digest(_s256(str(body.get("code_verifier", ""))), code.code_challenge):
        return _invalid_grant("Failed to verify code verifier")
    family = secrets.token_urlsafe(16)
    tokens = _tokens(state, code.login, family=family, nonce=code.nonce, jkt=jkt)
    return JSONResponse(tokens, headers=NO_STORE)
