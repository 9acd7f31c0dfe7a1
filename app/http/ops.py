"""Operations endpoints: liveness, readiness, metrics and the API description."""

from __future__ import annotations

from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from app.core.db import is_ready
from app.http.bodies import JSONResponse
from app.http.context import context
from app.http.openapi import Resp, build_openapi, operation, render_docs_page

API_TITLE = "Auth0 BFF"
API_VERSION = "0.1.0"


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, Literal["ok", "failing"]]


@operation("Liveness: the process is up", tags=["operations"], responses={200: Health})
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@operation(
    "Readiness: the database answers and signing keys are loaded or loadable",
    tags=["operations"],
    responses={200: Readiness, 503: Resp(Readiness, "Not ready")},
)
async def readyz(request: Request) -> Response:
    ctx = context(request)
    checks = {
        "database": "ok" if await is_ready(ctx.database) else "failing",
        "jwks": "ok" if await ctx.verifier.ready() else "failing",
    }
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@operation(
    "Prometheus metrics", tags=["operations"], responses={200: Resp(media_type="text/plain")}
)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def openapi_document(request: Request) -> dict[str, Any]:
    cached: dict[str, Any] | None = getattr(request.app.state, "openapi", None)
    if cached is None:
        cached = build_openapi(request.app.routes, title=API_TITLE, version=API_VERSION)
        request.app.state.openapi = cached
    return cached


@operation(
    "This API's OpenAPI 3.1 description",
    tags=["operations"],
    responses={200: Resp(description="OpenAPI document")},
)
async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi_document(request))


@operation(
    "A readable API page (self-contained, works offline)",
    tags=["operations"],
    responses={200: Resp(media_type="text/html")},
)
async def docs(request: Request) -> Response:
    return HTMLResponse(render_docs_page(openapi_document(request)))


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
]
