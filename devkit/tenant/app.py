"""A local stand-in Auth0 tenant, for `python -m app dev`, the tests and the benchmarks.

It is a separate ASGI app on its own port, never mounted in or imported by the service
(nothing in `app/` imports `devkit`). It serves what the service uses of a tenant:

- `/.well-known/openid-configuration` and `/.well-known/jwks.json`
- `POST /oauth/token` (client-credentials grant for the Management API; the
  `authorization_code` and `refresh_token` grants of the browser login, devkit/tenant/oauth.py,
  DPoP-bound when the request carries a proof, devkit/tenant/dpop.py)
- `GET`/`POST /authorize` (a sign-in form), `POST /oauth/revoke`, `GET /oidc/logout`,
  `POST /dev/backchannel-logout` (sends an OIDC back-channel logout for a `sid`)
- `GET`/`PATCH /api/v2/users/{id}`, `GET`/`POST`/`DELETE /api/v2/users/{id}/roles`,
  `POST /api/v2/jobs/verification-email`, `GET /api/v2/organizations/{org}/members`,
  `GET`/`POST`/`DELETE /api/v2/organizations/{org}/members/{id}/roles` (a member's roles
  in that organization; 404 for a user outside it), answered in the Management API's
  shapes: its paging envelopes (`_role_page`, `_member_page`) and error bodies
- `POST /dbconnections/change_password`
- `POST /dev/token`: mints an access token with the claims given (development only; a
  `cnf` of `{"jkt": THUMBPRINT}` binds it to a DPoP key, as `python -m devkit.dpop` asks)
- `GET /dev/stats`: how many requests of each kind it served (`?window=SECONDS`: the most
  Management API requests within any such window)
- `POST /dev/fault`: makes it slow or answer 429/500 (`devkit.tenant.faults`), for fault runs
- `POST /dev/rotate`: signs with the next key from now on (the old one stays published);
  `{"announced": false}` signs with a key it never published before

Its tokens (minted by `devkit.keys.TokenMinter`) carry the issuer `https://{domain}/`
while it is reached on loopback.

What it remembers is `devkit.tenant.state.TenantState`; the signing key and token minting
are `devkit.keys`.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devkit.keys import ALL_PERMISSIONS
from devkit.tenant.faults import FaultMiddleware, set_fault
from devkit.tenant.grants import token_grant
from devkit.tenant.oauth import oauth_discovery, oauth_routes
from devkit.tenant.state import TenantState


def _error(status: int, error: str, message: str, error_code: str | None = None) -> JSONResponse:
    """An error as the Management API words it (`errorCode` only where Auth0 sends one)."""
    body: dict[str, Any] = {"statusCode": status, "error": error, "message": message}
    if error_code is not None:
        body["errorCode"] = error_code
    return JSONResponse(body, status)


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int | None:
    """A whole-number query parameter within [low, high], or None when it is not one."""
    raw = request.query_params.get(name, str(default))
    return int(raw) if raw.isdigit() and low <= int(raw) <= high else None


def _bad_query(name: str) -> JSONResponse:
    message = f"Query validation error: invalid value on property {name}"
    return _error(400, "Bad Request", message, "invalid_query_string")


def _offset_page(request: Request, items: list[dict[str, str]], key: str) -> JSONResponse:
    """One page as Auth0 pages by offset: `page`/`per_page` (at most 100); with
    `include_totals=true` inside `{key, "start", "limit", "total"}`, else a bare list."""
    per_page = _query_int(request, "per_page", 50, 1, 100)
    page = _query_int(request, "page", 0, 0, 10**6)
    if per_page is None or page is None:
        return _bad_query("per_page" if per_page is None else "page")
    shown = items[page * per_page : (page + 1) * per_page]
    if request.query_params.get("include_totals") != "true":
        return JSONResponse(shown)
    return JSONResponse(
        {key: shown, "start": page * per_page, "limit": per_page, "total": len(items)}
    )


def _role_page(request: Request, roles: list[dict[str, str]]) -> JSONResponse:
    """One page of a user's or a member's roles."""
    return _offset_page(request, roles, "roles")


def _member_page(request: Request, members: list[dict[str, str]]) -> JSONResponse:
    """Organization members: with `take`/`from` (checkpoint paging) `{"members", "next"}`,
    `next` only while more follow; else by offset like roles."""
    if "take" not in request.query_params and "from" not in request.query_params:
        return _offset_page(request, members, "members")
    take = _query_int(request, "take", 50, 1, 100)
    checkpoint = request.query_params.get("from")
    try:  # opaque to callers; here it is the offset, base64url-encoded
        start = int(base64.urlsafe_b64decode(checkpoint)) if checkpoint else 0
    except ValueError:
        start = -1
    if take is None or start < 0:
        return _bad_query("take" if take is None else "from")
    body: dict[str, Any] = {"members": members[start : start + take]}
    if start + take < len(members):
        body["next"] = base64.urlsafe_b64encode(str(start + take).encode()).decode()
    return JSONResponse(body)


def create_tenant_app(state: TenantState) -> Starlette:
    """The stand-in tenant as an ASGI app; its state is shared with the caller."""

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def count(request: Request, kind: str) -> None:
        state.counts[kind] += 1
        state.counts["total"] += 1
        if request.url.path.startswith("/api/v2/"):
            state.management_calls.append(time.monotonic())

    def m2m_ok(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and header[7:] in state.m2m_tokens

    async def discovery(request: Request) -> Response:
        count(request, "discovery")
        issuer = state.minter.issuer
        return JSONResponse(
            {
                "issuer": issuer,
                "jwks_uri": f"{base(request)}/.well-known/jwks.json",
                "token_endpoint": f"{base(request)}/oauth/token",
                "id_token_signing_alg_values_supported": ["RS256"],
                **oauth_discovery(base(request)),
            }
        )

    async def jwks(request: Request) -> Response:
        count(request, "jwks")
        return JSONResponse(state.minter.jwks(), headers={"Cache-Control": "max-age=600"})

    async def oauth_token(request: Request) -> Response:
        count(request, "oauth_token")
        ctype = request.headers.get("content-type", "")
        body: dict[str, Any]
        if ctype.startswith("application/json"):
            body = orjson.loads(await request.body())
        else:
            body = dict(parse_qsl((await request.body()).decode()))
            if "client_id" not in body and request.headers.get("authorization", "").startswith(
                "Basic "
            ):
                raw = base64.b64decode(request.headers["authorization"][6:]).decode()
                body["client_id"], _, body["client_secret"] = raw.partition(":")
        if body.get("grant_type") in ("authorization_code", "refresh_token"):
            proofs = request.headers.getlist("dpop")
            return token_grant(state, body, proofs, f"{base(request)}/oauth/token")
        if body.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        if body.get("client_id") != state.client_id or not secrets.compare_digest(
            str(body.get("client_secret", "")), state.client_secret
        ):
            return JSONResponse(
                {"error": "access_denied", "error_description": "Unauthorized"}, 401
            )
        token = secrets.token_urlsafe(32)
        state.m2m_tokens.add(token)
        return JSONResponse(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": state.m2m_ttl_seconds,
                "scope": "read:users update:users read:roles create:role_members "
                "delete:role_members read:organization_members read:organization_member_roles "
                "create:organization_member_roles delete:organization_member_roles",
            }
        )

    async def user(request: Request) -> Response:
        if not m2m_ok(request):
            return _error(401, "Unauthorized", "Invalid token")
        user_id = unquote(request.path_params["user_id"])
        if request.method == "GET":
            count(request, "get_user")
            return JSONResponse(state.user(user_id))
        count(request, "patch_user")
        patch = orjson.loads(await request.body())
        record = state.user(user_id)
        for key, value in patch.items():
            if key == "user_metadata" and isinstance(value, dict):
                record["user_metadata"] = {**record.get("user_metadata", {}), **value}
            else:
                record[key] = value
        record["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        return JSONResponse(record)

    async def user_roles(request: Request) -> Response:
        if not m2m_ok(request):
            return _error(401, "Unauthorized", "Invalid token")
        user_id = unquote(request.path_params["user_id"])
        current = state.roles.setdefault(user_id, [])
        if request.method == "GET":
            count(request, "get_roles")
            return _role_page(request, current)
        body = orjson.loads(await request.body())
        wanted = [str(r) for r in body.get("roles", [])]
        if request.method == "POST":
            count(request, "assign_roles")
            for role_id in wanted:
                if all(r["id"] != role_id for r in current):
                    current.append({"id": role_id, "name": role_id, "description": ""})
        else:
            count(request, "remove_roles")
            state.roles[user_id] = [r for r in current if r["id"] not in wanted]
        return Response(status_code=204 if request.method == "DELETE" else 201)

    async def org_members(request: Request) -> Response:
        if not m2m_ok(request):
            return _error(401, "Unauthorized", "Invalid token")
        count(request, "org_members")
        members = state.org_members.get(request.path_params["org_id"])
        if members is None:
            message = "No organization found by that id or name"
            return _error(404, "Not Found", message, "inexistent_organization")
        return _member_page(request, [{"user_id": m} for m in sorted(members)])

    async def member_roles(request: Request) -> Response:
        """A member's roles within one organization, shaped and paged as Auth0 does."""
        if not m2m_ok(request):
            return _error(401, "Unauthorized", "Invalid token")
        org_id = request.path_params["org_id"]
        user_id = unquote(request.path_params["user_id"])
        if user_id not in state.org_members.get(org_id, set()):
            return _error(404, "Not Found", "The user is not a member of the organization.")
        current = state.member_roles.setdefault((org_id, user_id), [])
        if request.method == "GET":
            count(request, "get_member_roles")
            return _role_page(request, current)
        wanted = [str(r) for r in orjson.loads(await request.body()).get("roles", [])]
        if request.method == "POST":
            count(request, "assign_member_roles")
            known = {r["id"] for r in current}
            current += [{"id": r, "name": r, "description": ""} for r in wanted if r not in known]
        else:
            count(request, "remove_member_roles")
            current[:] = [r for r in current if r["id"] not in wanted]
        return Response(status_code=204)

    async def verification_email(request: Request) -> Response:
        if not m2m_ok(request):
            return _error(401, "Unauthorized", "Invalid token")
        count(request, "verification_email")
        body = orjson.loads(await request.body())
        return JSONResponse(
            {
                "type": "verification_email",
                "status": "pending",
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                "id": f"job_{uuid.uuid4().hex[:16]}",
                "user_id": body.get("user_id"),
            },
            201,
        )

    async def change_password(request: Request) -> Response:
        count(request, "change_password")
        return Response(
            "We've just sent you an email to reset your password.", media_type="text/plain"
        )

    async def dev_token(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        sub = str(body.pop("sub", "auth0|dev-user"))
        permissions = body.pop("permissions", list(ALL_PERMISSIONS))
        body.setdefault("email_verified", True)
        return JSONResponse(
            {"access_token": state.minter.mint(sub, permissions=permissions, **body)}
        )

    async def stats(request: Request) -> Response:
        """The counts by kind; with `?window=SECONDS`, also the most Management API requests
        that arrived within any such window (`management_busiest`)."""
        faulted = {"faulted": state.fault.faulted} if state.fault.faulted else {}
        window = request.query_params.get("window")
        busiest: dict[str, int] = {}
        if window is not None:
            try:
                busiest["management_busiest"] = state.busiest_window(float(window))
            except ValueError:
                return _bad_query("window")
        return JSONResponse({**state.counts, **faulted, **busiest})

    async def fault(request: Request) -> Response:
        return await set_fault(request, state.fault)

    async def rotate(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        new = state.minter.rotate(announced=bool(body.get("announced", True)))
        published = [str(k["kid"]) for k in state.minter.jwks()["keys"]]
        return JSONResponse({"kid": new.kid, "published": published})

    return Starlette(
        routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/.well-known/jwks.json", jwks),
            Route("/oauth/token", oauth_token, methods=["POST"]),
            *oauth_routes(state, count),
            Route(
                "/api/v2/users/{user_id:path}/roles", user_roles, methods=["GET", "POST", "DELETE"]
            ),
            Route("/api/v2/users/{user_id:path}", user, methods=["GET", "PATCH"]),
            Route("/api/v2/organizations/{org_id}/members", org_members),
            Route(
                "/api/v2/organizations/{org_id}/members/{user_id:path}/roles",
                member_roles,
                methods=["GET", "POST", "DELETE"],
            ),
            Route("/api/v2/jobs/verification-email", verification_email, methods=["POST"]),
            Route("/dbconnections/change_password", change_password, methods=["POST"]),
            Route("/dev/token", dev_token, methods=["POST"]),
            Route("/dev/stats", stats),
            Route("/dev/fault", fault, methods=["POST"]),
            Route("/dev/rotate", rotate, methods=["POST"]),
        ],
        middleware=[Middleware(FaultMiddleware, fault=state.fault)],
    )
