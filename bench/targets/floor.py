"""The floor: bare Starlette + asyncpg running the service's SQL with nothing else.

No authentication, no audit, no validation, no middleware, no access log: the scope comes
from an `X-Bench-Scope` header the load script sends. `GET /api/patients` runs the same
statement as `app.patients.search` with no filters (newest first, `limit + 1` rows);
`POST /api/patients` is one autocommitted `app.patients.repository.INSERT_PATIENT`, unaudited.

    uvicorn bench.targets.floor:app --loop uvloop --http httptools   (BENCH_DATABASE_URL=...)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.patients.repository import COLUMNS, INSERT_PATIENT

PAGE_SQL = f"""SELECT {COLUMNS} FROM patients WHERE scope = $1 AND deleted_at IS NULL
ORDER BY created_at DESC, id DESC LIMIT $2"""


def pool_options() -> dict[str, Any]:
    """The same pool bounds and statement timeout as the service's defaults."""
    return {
        "dsn": os.environ["BENCH_DATABASE_URL"],
        "min_size": int(os.environ.get("BENCH_POOL_MIN_SIZE", "2")),
        "max_size": int(os.environ.get("BENCH_POOL_MAX_SIZE", "10")),
        "server_settings": {"statement_timeout": "5000", "application_name": "bench-floor"},
    }


def _json(content: Any, status: int = 200) -> Response:
    # default=str: asyncpg's own UUID type is not one orjson knows.
    return Response(orjson.dumps(content, default=str), status, media_type="application/json")


async def page(request: Request) -> Response:
    scope = request.headers["x-bench-scope"]
    limit = int(request.query_params.get("limit", "20"))
    async with request.state.pool.acquire() as conn:
        rows = await conn.fetch(PAGE_SQL, scope, limit + 1)
    return _json({"items": [dict(row) for row in rows[:limit]], "next_cursor": None})


async def insert(request: Request) -> Response:
    scope = request.headers["x-bench-scope"]
    body = orjson.loads(await request.body())
    identifier = body.get("identifier") or {}
    async with request.state.pool.acquire() as conn:
        row = await conn.fetchrow(
            INSERT_PATIENT,
            scope,
            "bench-floor",
            identifier.get("system"),
            identifier.get("value"),
            body["given_name"],
            body["family_name"],
            body["given_name"].lower(),
            body["family_name"].lower(),
            dt.date.fromisoformat(body["birth_date"]),
            body.get("gender"),
            None,
            None,
            None,
            True,
        )
    return _json(dict(row) if row else {"duplicate": True}, 201 if row else 409)


async def healthz(request: Request) -> Response:
    return Response(b"ok")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    pool = await asyncpg.create_pool(**pool_options())
    try:
        yield {"pool": pool}
    finally:
        await pool.close()


app = Starlette(
    routes=[
        Route("/api/patients", page, methods=["GET"]),
        Route("/api/patients", insert, methods=["POST"]),
        Route("/healthz", healthz),
    ],
    lifespan=lifespan,
)
