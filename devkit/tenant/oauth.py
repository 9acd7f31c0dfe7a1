"""The stand-in tenant's browser login: Auth0's authorization-code flow, for one client.

`oauth_routes` adds `/authorize` (a sign-in form; any user name signs in, a new one signs
up, "deny" refuses), `/oauth/revoke`, `/oidc/logout` and `/dev/backchannel-logout` to the
tenant app; `token_grant` serves the `authorization_code` grant (PKCE `S256` only) and the
`refresh_token` grant with rotation and reuse detection for `POST /oauth/token`. Status
codes and error bodies are Auth0's. The HTML pages are devkit/tenant/login_page.py.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson
from jose import jwt
from jose.exceptions import JOSEError
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from devkit.tenant.grants import CODE_TTL_SECONDS, NO_STORE, client_ok, oauth_error
from devkit.tenant.login_page import error_page, safe_url, sign_in_page, signed_out_page
from devkit.tenant.state import AuthCode, Login, TenantState

Count = Callable[[Request, str], None]

_USERNAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # connection and organization names
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url SHA-256, no padding
_DATABASE_CONNECTION = "Username-Password-Authentication"


def oauth_discovery(base: str) -> dict[str, Any]:
    """The discovery document's members for the browser login, as Auth0 publishes them."""
    return {
        "authorization_endpoint": f"{base}/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "end_session_endpoint": f"{base}/oidc/logout",
        "scopes_supported": ["openid", "profile", "offline_access", "email"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "subject_types_supported": ["public"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "claims_supported": [
            *("aud", "auth_time", "email", "email_verified", "exp", "iat", "iss", "name"),
            *("nickname", "picture", "sid", "sub"),
        ],
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
    }


# What the sign-in form carries from the authorize request back to `POST /authorize`.
FORWARDED = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "audience",
    "screen_hint",
    "organization",
    "connection",
)


def _check_authorize(state: TenantState, params: Mapping[str, str]) -> tuple[str, str] | None:
    """The reason an authorize request is refused (error, description), or None."""
    client_id, redirect_uri = params.get("client_id", ""), params.get("redirect_uri", "")
    if client_id != state.session_client_id:
        return "unauthorized_client", f"Unknown client: {client_id}"
    if safe_url(redirect_uri) is None or (
        state.allowed_callbacks and redirect_uri not in state.allowed_callbacks
    ):
        return "invalid_request", (
            "Callback URL mismatch. The provided redirect_uri is not in the list of "
            "allowed callback URLs."
        )
    if params.get("response_type") != "code":
        return "unsupported_response_type", "Unsupported response type: only code is allowed"
    if params.get("code_challenge_method") != "S256" or not _CHALLENGE.fullmatch(
        params.get("code_challenge", "")
    ):
        return "invalid_request", "PKCE is required: a code_challenge with the S256 method"
    for name in ("connection", "organization"):
        if name in params and not _NAME.fullmatch(params[name]):
            return "invalid_request", f"Invalid {name}"
    return None


def _redirect(url: str, query: dict[str, str]) -> Response:
    separator = "&" if "?" in url else "?"
    return RedirectResponse(f"{url}{separator}{urlencode(query)}", 302, headers=NO_STORE)


def _sign_in(state: TenantState, params: Mapping[str, str]) -> Response:
    """`POST /authorize`: signs the user in (creating them), then redirects with a code."""
    back = {"state": params["state"]} if "state" in params else {}
    username = params.get("username", "")
    if username == "deny" or params.get("action") == "cancel":
        denied = {
            "error": "access_denied",
            "error_description": "User did not authorize the request",
        }
        return _redirect(params["redirect_uri"], denied | back)
    if not _USERNAME.fullmatch(username):
        return sign_in_page(params, FORWARDED, "Enter a user name: letters, digits and ._@+-", 400)
    connection = params.get("connection") or _DATABASE_CONNECTION
    provider = "auth0" if connection == _DATABASE_CONNECTION else connection
    sub = f"{provider}|{username}"
    if sub not in state.users and provider != "auth0":
        identity = {"provider": provider, "user_id": username, "connection": connection}
        state.user(sub)["identities"] = [identity | {"isSocial": True}]
    state.user(sub)
    login = Login(
        sub=sub,
        client_id=params["client_id"],
        sid=secrets.token_urlsafe(24),
        auth_time=int(time.time()),
        scope=params.get("scope") or "openid",
        audience=params.get("audience") or state.minter.audience,
        org_id=params.get("organization"),
    )
    state.logins.sessions[login.sid] = login
    code = secrets.token_urlsafe(32)
    state.logins.codes[code] = AuthCode(
        login,
        redirect_uri=params["redirect_uri"],
        code_challenge=params["code_challenge"],
        nonce=params.get("nonce"),
        expires_at=time.time() + CODE_TTL_SECONDS,
    )
    return _redirect(params["redirect_uri"], {"code": code} | back)


async def _form(request: Request) -> dict[str, str]:
    """A form or JSON body, with HTTP Basic client credentials folded in."""
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        loaded = orjson.loads(raw or b"{}")
        body = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
    else:
        body = dict(parse_qsl(raw.decode(errors="replace"), keep_blank_values=True))
    header = request.headers.get("authorization", "")
    if "client_id" not in body and header.startswith("Basic "):
        try:
            pair = base64.b64decode(header[6:], validate=True).decode()
        except ValueError:
            return body
        body["client_id"], _, body["client_secret"] = pair.partition(":")
    return body


def oauth_routes(state: TenantState, count: Count) -> list[Route]:
    """The browser-login routes of the tenant app, sharing its state and request counts."""

    async def authorize(request: Request) -> Response:
        """The sign-in page (counted as `authorize`), and its form post (`sign_in`)."""
        if request.method == "GET":
            count(request, "authorize")
            params = dict(request.query_params)
        else:
            count(request, "sign_in")
            params = await _form(request)
        refused = _check_authorize(state, params)
        if refused is not None:
            return error_page(*refused)
        if request.method == "GET":
            return sign_in_page(params, FORWARDED)
        return _sign_in(state, params)

    async def revoke(request: Request) -> Response:
        count(request, "revoke")
        body = await _form(request)
        if not client_ok(state, body):
            return oauth_error(401, "invalid_client", "Client authentication failed.")
        if not body.get("token"):
            return oauth_error(400, "invalid_request", "Missing required parameter: token")
        token = state.logins.refresh_tokens.get(body["token"])
        if token is not None and token.login.client_id == body["client_id"]:
            state.logins.revoked_families.add(token.family)
        return Response(status_code=200)

    async def logout(request: Request) -> Response:
        count(request, "logout")
        params = request.query_params
        client_id = params.get("client_id")
        if params.get("id_token_hint"):
            try:
                claims = jwt.decode(
                    params["id_token_hint"],
                    state.minter.jwks(),
                    algorithms=["RS256"],
                    audience=state.session_client_id,
                    issuer=state.minter.issuer,
                    options={"verify_exp": False, "verify_at_hash": False},
                )
            except JOSEError:
                return error_page("invalid_request", "Invalid id_token_hint")
            sid = claims.get("sid")
            if isinstance(sid, str):
                state.logins.end_sessions(sid=sid, sub=None, revoke=False)
            client_id = state.session_client_id
        target = safe_url(params.get("post_logout_redirect_uri", ""))
        allowed = not state.allowed_logout_urls or target in state.allowed_logout_urls
        if target is None or not allowed or client_id != state.session_client_id:
            return signed_out_page()
        back = {"state": params["state"]} if "state" in params else {}
        return _redirect(target, back) if back else RedirectResponse(target, 302, NO_STORE)

    async def backchannel(request: Request) -> Response:
        count(request, "backchannel")
        body = orjson.loads(await request.body() or b"{}")
        given = body if isinstance(body, dict) else {}
        sid, sub = given.get("sid") or None, given.get("sub") or None
        url = given.get("url") or state.backchannel_logout_url
        texts = all(isinstance(value, str | None) for value in (sid, sub, url))
        if not texts or not (sid or sub) or not url:
            return JSONResponse({"error": "a sid or sub, and a url (or a configured one)"}, 400)
        if sid in state.logins.sessions and sub is None:
            sub = state.logins.sessions[sid].sub
        state.logins.end_sessions(sid=sid, sub=sub, revoke=True)
        token = state.minter.logout_token(client_id=state.session_client_id, sub=sub, sid=sid)
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                answer = await http.post(url, data={"logout_token": token})
        except httpx.HTTPError as exc:
            return JSONResponse({"delivered_to": url, "error": type(exc).__name__}, 502)
        return JSONResponse({"delivered_to": url, "status": answer.status_code})

    return [
        Route("/authorize", authorize, methods=["GET", "POST"]),
        Route("/oauth/revoke", revoke, methods=["POST"]),
        Route("/oidc/logout", logout),
        Route("/dev/backchannel-logout", backchannel, methods=["POST"]),
    ]
