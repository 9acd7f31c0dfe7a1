"""The peer: what a team would otherwise write, FastAPI with Auth0's `auth0-fastapi-api`.

Written plainly, as the SDK's README shows: an `Auth0FastAPI(domain, audience)` and a
`Depends(auth0.require_auth(scopes=...))` on the route, asyncpg for the same statement as
the service's patient page, FastAPI's own JSON response. No audit log.

The one departure: the SDK builds `https://{domain}/.well-known/openid-configuration` and
the stand-in tenant serves plain http on loopback, so `custom_fetch` (an SDK option) sends
those requests to the tenant; the JWKS URL comes from the tenant's discovery document.

    uvicorn bench.targets.fastapi_auth0:app --loop uvloop --http httptools
    (AUTH0_DOMAIN, AUTH0_AUDIENCE, BENCH_TENANT_URL, BENCH_DATABASE_URL)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
from fastapi import Depends, FastAPI
from fastapi_plugin import Auth0FastAPI  # type: ignore[import-untyped]

from bench.targets.floor import PAGE_SQL, pool_options

DOMAIN = os.environ["AUTH0_DOMAIN"]
TENANT_URL = os.environ["BENCH_TENANT_URL"].rstrip("/")
if not TENANT_URL.startswith("http://127.0.0.1:"):
    raise SystemExit("BENCH_TENANT_URL must be the stand-in tenant on 127.0.0.1")

http = httpx.AsyncClient(timeout=5.0)


async def tenant_fetch(url: str) -> httpx.Response:
    """The SDK's `custom_fetch`: its https://DOMAIN URLs go to the stand-in tenant."""
    response = await http.get(url.replace(f"https://{DOMAIN}", TENANT_URL, 1))
    response.raise_for_status()
    return response


auth0 = Auth0FastAPI(
    domain=DOMAIN,
    audience=os.environ["AUTH0_AUDIENCE"],
    custom_fetch=tenant_fetch,
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(**pool_options())
    yield
    await app.state.pool.close()
    await http.aclose()


app = FastAPI(lifespan=lifespan)


@app.get("/api/patients")
async def list_patients(
    limit: int = 20, claims: dict[str, Any] = Depends(auth0.require_auth(scopes="read:patients"))
) -> dict[str, Any]:
    scope = f"org:{claims['org_id']}" if claims.get("org_id") else f"user:{claims['sub']}"
    async with app.state.pool.acquire() as conn:
        rows = await conn.fetch(PAGE_SQL, scope, limit + 1)
    return {"items": [dict(row) for row in rows[:limit]], "next_cursor": None}


@app.get("/healthz")
async def healthz() -> str:
    return "ok"
