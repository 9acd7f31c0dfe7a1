"""Operations endpoints: liveness, readiness, metrics, and the API description as OpenAPI
(`/openapi.json`), as an interactive explorer (`/docs`, app.http.explorer) and as a plain
table (`/docs/table`). Metrics name every route and its traffic: with METRICS_TOKEN set,
only a scraper that sends it as a bearer token reads them."""

from __future__ import annotations

import hmac
import html
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from app.core.db import is_ready
from app.core.errors import Unauthorized
from app.http import explorer
from app.http.bodies import JSONResponse
from app.http.context import context
from app.http.openapi import BEARER_ONLY, Access, Problem, Resp, build_openapi, operation
from app.http.server import stopping

API_TITLE = "Auth0 BFF"
API_VERSION = "0.1.0"


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, Literal["ok", "failing", "stopped"]] = Field(
        description="`database`, `jwks`: `ok` or `failing` (any `failing`: not ready, 503). "
        "`audit_digests` (with AUDIT_DIGESTS on): `ok`, or `stopped` when the digest issuer "
        "refused to sign over rewritten digests (docs/audit.md); it never makes a copy unready."
    )


@operation("Liveness: the process is up", tags=["operations"], responses={200: Health})
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@operation(
    "Readiness: the database answers and signing keys are loaded or loadable; 503 from the "
    "moment the copy is told to stop (SHUTDOWN_DRAIN_SECONDS)",
    tags=["operations"],
    responses={200: Readiness, 503: Resp(Readiness, "Not ready, or stopping")},
)
async def readyz(request: Request) -> Response:
    if stopping():  # a load balancer should stop sending now; nothing else need be asked
        return JSONResponse(
            {"status": "not ready", "checks": {"shutdown": "failing"}}, status_code=503
        )
    core = context(request)
    checks = {"database": "ok" if await is_ready(core.database) else "failing"}
    for name, check in core.checks.items():
        checks[name] = "ok" if await check() else "failing"
    ready = all(v == "ok" for v in checks.values())
    for name, report in core.reports.items():
        checks[name] = report()
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@operation(
    "Prometheus metrics",
    tags=["operations"],
    responses={
        200: Resp(media_type="text/plain"),
        401: Resp(Problem, "METRICS_TOKEN is set and not sent", "application/problem+json"),
    },
)
async def metrics(request: Request) -> Response:
    token = context(request).settings.server.metrics_token
    if token is not None:
        _check_bearer(request, token.get_secret_value())
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _check_bearer(request: Request, expected: str) -> None:
    """`Authorization: Bearer <expected>`, compared in constant time, or 401."""
    values = request.headers.getlist("authorization")
    if not values:
        raise Unauthorized("the metrics token is required", error=None, realm="metrics")
    scheme, _, given = values[0].partition(" ")
    matches = hmac.compare_digest(given.strip().encode(), expected.encode())
    if len(values) != 1 or scheme.lower() != "bearer" or not matches:
        raise Unauthorized("the metrics token is wrong", realm="metrics")


def openapi_document(request: Request) -> dict[str, Any]:
    """The app's description, built once; what its `requires` routes accept comes from the
    `Access` the app was built with (`app.state.openapi_access`), bearer tokens by default."""
    cached: dict[str, Any] | None = getattr(request.app.state, "openapi", None)
    if cached is None:
        access: Access = getattr(request.app.state, "openapi_access", BEARER_ONLY)
        cached = build_openapi(
            request.app.routes, title=API_TITLE, version=API_VERSION, access=access
        )
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
    "The API as one plain table (no scripts; the explorer is /docs)",
    tags=["operations"],
    responses={200: Resp(media_type="text/html")},
)
async def docs_table(request: Request) -> Response:
    return HTMLResponse(render_docs_page(openapi_document(request)))


def render_docs_page(spec: dict[str, Any]) -> str:
    """A readable, self-contained API page (no scripts, no CDN): works offline."""
    esc = html.escape
    rows = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = ", ".join(
                f"{esc(p['name'])} ({p['in']}{', required' if p.get('required') else ''})"
                for p in op.get("parameters", [])
            )
            statuses = " ".join(
                f'<span class="s{code[0]}">{esc(code)}</span>' for code in op["responses"]
            )
            perms = ", ".join(op.get("x-permissions", []))
            auth = "token" if op.get("security") else "public"
            rows.append(
                f"<tr><td class=m>{esc(method.upper())}</td><td><code>{esc(path)}</code></td>"
                f"<td>{esc(op['summary'])}</td><td>{esc(perms or auth)}</td>"
                f"<td>{params}</td><td>{statuses}</td></tr>"
            )
    title = esc(spec["info"]["title"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.4rem;
text-align:left;vertical-align:top}}.m{{font-weight:bold}}code{{font-size:13px}}
span{{display:inline-block;padding:0 .3rem;margin:1px;border-radius:3px;background:#eee}}
.s2{{background:#d4f4d4}}.s4{{background:#fde2c8}}.s5{{background:#f8d0d0}}
</style></head><body>
<h1>{title} <small>{esc(spec["info"]["version"])}</small></h1>
<p>The machine-readable description is <a href="/openapi.json">/openapi.json</a>.
Errors are <code>application/problem+json</code>.</p>
<table><tr><th>Method</th><th>Path</th><th>Summary</th><th>Permission</th>
<th>Parameters</th><th>Responses</th></tr>
{"".join(rows)}
</table></body></html>"""


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs/table", docs_table, methods=["GET"]),
    *explorer.routes,
]
