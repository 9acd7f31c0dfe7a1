"""`/docs`: Swagger UI over `/openapi.json`, served from the service's own files.

The Swagger UI files come from the installed `swagger-ui-bundle-v2` package (Swagger UI
5, which reads OpenAPI 3.1); only the few the page uses are served, under
`/docs/static/`, with a version in the query so a year of caching is safe. The page starts
Swagger UI from a script file rather than an inline one, so its Content-Security-Policy
allows scripts from this origin only, and no `eval`. The "Authorize" button takes an
access token (the `bearerAuth` scheme) and, in cookie mode, `X-CSRF: 1` (the `csrf` scheme:
the browser sends the session cookie itself), and keeps them in the page's memory only.
Swagger UI cannot sign DPoP proofs: it shows the `dpop` scheme as unsupported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from app.http.openapi import Problem, Resp, operation

SWAGGER_UI = Path(str(swagger_ui_path))
SWAGGER_UI_VERSION = SWAGGER_UI.name.removeprefix("swagger-ui-")

# Exactly what the page needs: scripts from here (no inline script, no eval), Swagger UI's
# stylesheet (its components set styles through the DOM, which `style-src` does not
# govern: no 'unsafe-inline'), its data: icons, and fetches of /openapi.json and of the
# "Try it out" requests, to this origin only. tests/http/test_explorer.py drives the page
# in Chromium under this policy and fails on any violation.
EXPLORER_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_IMMUTABLE = "public, max-age=31536000, immutable"

# Swagger UI, started once its bundle has loaded. No StandaloneLayout: its top bar would
# load any URL typed into it. No validator badge: it would call validator.swagger.io.
EXPLORER_JS = b"""\
"use strict";
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    validatorUrl: null,
    persistAuthorization: false,
    displayRequestDuration: true
  });
});
"""
_EXPLORER_JS_VERSION = hashlib.sha256(EXPLORER_JS).hexdigest()[:12]

# name -> (media type, where it is); nothing else in the package is reachable.
_ASSETS: dict[str, tuple[str, Path | None]] = {
    "swagger-ui.css": ("text/css; charset=utf-8", SWAGGER_UI / "swagger-ui.css"),
    "swagger-ui-bundle.js": (
        "text/javascript; charset=utf-8",
        SWAGGER_UI / "swagger-ui-bundle.js",
    ),
    "favicon-32x32.png": ("image/png", SWAGGER_UI / "favicon-32x32.png"),
    "favicon-16x16.png": ("image/png", SWAGGER_UI / "favicon-16x16.png"),
    "explorer.js": ("text/javascript; charset=utf-8", None),  # EXPLORER_JS
}


_OTHER_TYPES = ("text/css", "image/png")
PROBLEM_TYPE = "application/problem+json"


def _asset_url(name: str) -> str:
    version = _EXPLORER_JS_VERSION if name == "explorer.js" else SWAGGER_UI_VERSION
    return f"/docs/static/{name}?v={version}"


def render_explorer_page() -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>API explorer</title>
<link rel="icon" type="image/png" sizes="32x32" href="{_asset_url("favicon-32x32.png")}">
<link rel="icon" type="image/png" sizes="16x16" href="{_asset_url("favicon-16x16.png")}">
<link rel="stylesheet" href="{_asset_url("swagger-ui.css")}">
</head><body>
<noscript><p>The explorer needs JavaScript. The API description is
<a href="/openapi.json">/openapi.json</a>; a plain table of it is
<a href="/docs/table">/docs/table</a>.</p></noscript>
<div id="swagger-ui"></div>
<script src="{_asset_url("swagger-ui-bundle.js")}"></script>
<script src="{_asset_url("explorer.js")}"></script>
</body></html>"""


@operation(
    "The interactive API explorer (Swagger UI, served from this service)",
    tags=["operations"],
    responses={200: Resp(media_type="text/html")},
)
async def explorer(request: Request) -> Response:
    return HTMLResponse(render_explorer_page(), headers={"Content-Security-Policy": EXPLORER_CSP})


@operation(
    "A file of the API explorer (Swagger UI's, or the script that starts it)",
    tags=["operations"],
    responses={
        200: Resp(description="The file", media_type="text/javascript", also=_OTHER_TYPES),
        404: Resp(Problem, "No such file (the names are the page's own)", PROBLEM_TYPE),
    },
)
async def explorer_asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _ASSETS:
        raise HTTPException(404)
    media_type, path = _ASSETS[name]
    headers = {"Cache-Control": _IMMUTABLE}
    if path is None:
        return Response(EXPLORER_JS, media_type=media_type, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)


routes = [
    Route("/docs", explorer, methods=["GET"]),
    Route("/docs/static/{name}", explorer_asset, methods=["GET"]),
]
