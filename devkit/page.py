"""The development page at `/` (`python -m app dev` only, never `serve`): sign in through
the stand-in tenant, see who you are, list and create patients, sign out.

It is the cookie mode's smallest client: plain `fetch` with the session cookie and
`X-CSRF: 1`, no token ever in the browser. The files are package data in `devkit/static/`;
the page sets its own Content-Security-Policy (scripts and styles from this origin only,
no inline script), which the request envelope keeps.
"""

from __future__ import annotations

from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/page/app.css": ("app.css", "text/css; charset=utf-8"),
}


def _load(name: str) -> bytes:
    return resources.files("devkit").joinpath("static", name).read_bytes()


def page_routes() -> list[Route]:
    """GET (and HEAD) routes for the page and its script and style sheet."""
    routes = []
    for path, (name, media_type) in _FILES.items():
        body = _load(name)

        async def serve(
            request: Request, body: bytes = body, media_type: str = media_type
        ) -> Response:
            return Response(
                body,
                media_type=media_type,
                headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
            )

        routes.append(Route(path, serve, methods=["GET"], include_in_schema=False))
    return routes


def add_page(app: Starlette) -> Starlette:
    """The service `app` with the page's routes in front of its own (development only)."""
    app.router.routes[0:0] = page_routes()
    return app
