"""A local stand-in Auth0 tenant, for `python -m app dev`, the tests and the benchmarks.

It is a separate ASGI app on its own port, never mounted in or imported by the production
app (`app.main` does not import this module). It serves what the service uses of a tenant:

- `/.well-known/openid-configuration` and `/.well-known/jwks.json`
- `POST /oauth/token` (client-credentials grant for the Management API)
- `GET`/`PATCH /api/v2/users/{id}`, `GET`/`POST`/`DELETE /api/v2/users/{id}/roles`,
  `POST /api/v2/jobs/verification-email`, `GET /api/v2/organizations/{org}/members`,
  `GET`/`POST`/`DELETE /api/v2/organizations/{org}/members/{id}/roles` (a member's roles
  in that organization; 404 for a user outside it)
- `POST /dbconnections/change_password`
- `POST /dev/token`: mints an access token with the claims given (development only)
- `GET /dev/stats`: how many requests of each kind it served
- `POST /dev/fault`: makes it slow or answer 429/500 (`app.dev.faults`), for fault runs
- `POST /dev/rotate`: signs with the next key from now on (the old one stays published);
  `{"announced": false}` signs with a key it never published before

Its tokens (minted by `app.dev.keys.TokenMinter`) carry the issuer `https://{domain}/`
while it is reached on loopback.

Past 300 lines because it is one app whose routes share one `TenantState`; the signing
key and token minting are app/dev/keys.py.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.dev.faults import FaultMiddleware, TenantFault, set_fault
from app.dev.keys import ALL_PERMISSIONS, TokenMinter


@dataclass
class TenantState:
    """What the stand-in tenant remembers: its keys, M2M client, users, roles and counts."""

    minter: TokenMinter
    client_id: str
    client_secret: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    roles: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    org_members: dict[str, set[str]] = field(default_factory=dict)
    member_roles: dict[tuple[str, str], list[dict[str, str]]] = field(default_factory=dict)
    m2m_tokens: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    m2m_ttl_seconds: int = 86400
    fault: TenantFault = field(default_factory=TenantFault)

    def user(self, user_id: str) -> dict[str, Any]:
        if user_id not in self.users:
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            local = user_id.split("|")[-1]
            self.users[user_id] = {
                "user_id": user_id,
                "email": f"{local}@example.com",
                "email_verified": True,
                "name": local,
                "nickname": local,
                "given_name": None,
                "family_name": None,
                "picture": "https://example.com/avatar.png",
                "user_metadata": {},
                "app_metadata": {"plan": "internal"},
                "created_at": now,
                "updated_at": now,
                "identities": [
                    {
                        "provider": "auth0",
                        "user_id": local,
                        "connection": "Username-Password-Authentication",
                        "isSocial": False,
                    }
                ],
                "last_ip": "127.0.0.1",
                "logins_count": 1,
            }
        return self.users[user_id]


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"statusCode": status, "error": error, "message": message}, status)


def _role_page(request: Request, roles: list[dict[str, str]]) -> JSONResponse:
    """One page of roles: `page`/`per_page`, and with `include_totals` the totals object."""
    per_page = min(int(request.query_params.get("per_page", 50)), 100)
    page = int(request.query_params.get("page", 0))
    items = roles[page * per_page : (page + 1) * per_page]
    if request.query_params.get("include_totals") != "true":
        return JSONResponse(items)
    return JSONResponse(
        {"roles": items, "start": page * per_page, "limit": per_page, "total": len(roles)}
    )


def create_tenant_app(state: TenantState) -> Starlette:
    """The stand-in tenant as an ASGI app; its state is shared with the caller."""

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def count(request: Request, kind: str) -> None:
        state.counts[kind] += 1
        state.counts["total"] += 1

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
            return JSONResponse(current)
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
        members = state.org_members.get(request.path_params["org_id"], set())
        return JSONResponse([{"user_id": m} for m in sorted(members)])

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
        faulted = {"faulted": state.fault.faulted} if state.fault.faulted else {}
        return JSONResponse({**state.counts, **faulted})

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
