"""`/remote/...` is matched before the other routes (app/http/routing.py) and reaches what
it reached before: no other route takes a path under it, a method no remote route allows
still gets the router's 405, and the OpenAPI document lists the routes as declared."""

from __future__ import annotations

from starlette.routing import Match, Route

from app.core.settings import Settings
from app.main import create_app
from tests.remote.support import Running

UNDER_REMOTE = ["/remote/plain/x", "/remote/echo/a/b/c", "/remote/x/", "/remote/a/b?c"]


def test_no_other_route_takes_a_path_under_remote(settings: Settings) -> None:
    app = create_app(settings)
    others = [r for r in app.routes if not (isinstance(r, Route) and r.path.startswith("/remote/"))]
    assert len(others) > 50
    for path in UNDER_REMOTE:
        for method in ("GET", "POST", "OPTIONS"):
            scope = {"type": "http", "path": path, "method": method, "root_path": ""}
            assert all(r.matches(scope)[0] is Match.NONE for r in others), path


async def test_a_method_no_remote_route_allows_is_the_routers_405(app: Running) -> None:
    response = await app.http.request("OPTIONS", "/remote/plain/x")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"


async def test_the_openapi_document_keeps_the_declared_order(
    app: Running, settings: Settings
) -> None:
    spec = (await app.http.get("/openapi.json")).json()
    routes = create_app(settings).routes
    declared = [r.path_format for r in routes if isinstance(r, Route) and r.include_in_schema]
    documented = list(spec["paths"])
    assert documented == list(dict.fromkeys(declared))
    assert documented[-1] == "/remote/{name}/{rest}"  # last, as declared
