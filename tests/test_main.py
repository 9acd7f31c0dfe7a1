"""The app envelope: problem+json errors, request ids, limits, operations endpoints."""

from __future__ import annotations

import logging

import asyncpg
import httpx
import orjson
import pytest
import respx
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.core.logs import JsonFormatter
from app.core.settings import Settings
from app.http.middleware import Metrics, RequestContextMiddleware
from app.main import create_app
from devkit.db import ProvisionedDatabase
from tests.helpers import assert_problem


class TestHealthz:
    async def test_ok(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_ignores_a_garbage_authorization_header(
        self, client: httpx.AsyncClient, tenant: respx.MockRouter
    ) -> None:
        response = await client.get("/healthz", headers={"Authorization": "Bearer garbage"})
        assert response.status_code == 200
        assert not tenant.calls  # public routes never touch the tenant


class TestErrors:
    async def test_unknown_path_is_problem_404(self, client: httpx.AsyncClient) -> None:
        body = assert_problem(await client.get("/no/such/path"), 404)
        assert body["title"] == "Not Found"

    async def test_wrong_method_is_problem_405(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/healthz")
        assert_problem(response, 405)
        assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}

    async def test_declared_body_over_limit_is_413_before_reading(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.post("/healthz", content=b"x" * (1024 * 1024 + 1))
        body = assert_problem(response, 413)
        assert "1048576 bytes" in str(body["detail"])

    async def test_unexpected_exception_is_bare_500_with_request_id(
        self, settings: Settings, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def boom(request: Request) -> Response:
            raise RuntimeError("secret internal detail")

        app = create_app(settings)
        app.router.routes.append(Route("/boom", boom))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                response = await http.get("/boom", headers={"X-Request-ID": "req-500"})
        body = assert_problem(response, 500)
        assert body["request_id"] == "req-500"
        assert "secret internal detail" not in response.text
        logged = [r for r in caplog.records if r.name == "app.http.middleware"]
        assert logged and getattr(logged[0], "request_id", None) == "req-500"


class TestRequestId:
    async def test_new_id_when_none_sent(self, client: httpx.AsyncClient) -> None:
        first = (await client.get("/healthz")).headers["x-request-id"]
        second = (await client.get("/healthz")).headers["x-request-id"]
        assert len(first) == 32 and first != second

    async def test_sane_caller_id_is_kept(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz", headers={"X-Request-ID": "frontend-abc.123"})
        assert response.headers["x-request-id"] == "frontend-abc.123"

    @pytest.mark.parametrize("bad", ["has space", "x" * 200, 'quote"d', "<script>"])
    async def test_insane_caller_id_is_replaced(self, client: httpx.AsyncClient, bad: str) -> None:
        response = await client.get("/healthz", headers={"X-Request-ID": bad})
        assert response.headers["x-request-id"] != bad
        assert len(response.headers["x-request-id"]) == 32

    async def test_access_log_has_fields_and_no_query_or_token(
        self, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="app.http.middleware")
        await client.get(
            "/no-such?name=Alice",
            headers={"X-Request-ID": "log-1", "Authorization": "Bearer tok.en.x"},
        )
        records = [r for r in caplog.records if getattr(r, "request_id", None) == "log-1"]
        assert len(records) == 1
        line = JsonFormatter().format(records[0])
        entry = orjson.loads(line)
        assert entry["method"] == "GET"
        assert entry["path"] == "/no-such"
        assert entry["status"] == 404
        assert entry["duration_ms"] >= 0
        assert "Alice" not in line and "tok.en.x" not in line


class TestReadyz:
    async def test_ready(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ready", "checks": {"database": "ok", "jwks": "ok"}}

    async def test_database_down_then_back(
        self, client: httpx.AsyncClient, database: ProvisionedDatabase
    ) -> None:
        admin = await asyncpg.connect(database.admin_url)
        try:
            await admin.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                database.name,
            )
            down = await client.get("/readyz")
            assert down.status_code == 503
            assert down.json()["checks"]["database"] == "failing"
            await admin.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS true')
            up = await client.get("/readyz")
            assert up.status_code == 200
        finally:
            await admin.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS true')
            await admin.close()


class TestMetrics:
    async def test_counts_by_route_template_and_status(self, client: httpx.AsyncClient) -> None:
        await client.get("/healthz")
        await client.get("/healthz")
        await client.get("/unknown/12345")
        text = (await client.get("/metrics")).text
        assert 'http_requests_total{method="GET",route="/healthz",status="200"} 2.0' in text
        assert 'route="<unmatched>",status="404"' in text
        assert "/unknown/12345" not in text
        assert "http_request_duration_seconds_bucket" in text

    async def test_unknown_methods_share_one_label(self, client: httpx.AsyncClient) -> None:
        for n in range(5):  # any token is a valid HTTP method
            response = await client.request(f"BREW{n}", "/healthz")
            assert response.status_code == 405
            assert response.headers["cache-control"] == "no-store"
        text = (await client.get("/metrics")).text
        assert 'http_requests_total{method="OTHER",route="/healthz",status="405"} 5.0' in text
        assert "BREW" not in text

    async def test_a_response_keeps_its_own_headers_and_gets_the_rest_once(self) -> None:
        async def cached(request: Request) -> Response:
            return Response(
                "x", headers={"Cache-Control": "max-age=60", "X-Frame-Options": "SAMEORIGIN"}
            )

        app = RequestContextMiddleware(
            Starlette(routes=[Route("/", cached)]), metrics=Metrics(), max_body_bytes=1024
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/", headers={"X-Request-ID": "abc-123"})
        assert response.headers.get_list("cache-control") == ["max-age=60"]
        assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
        assert response.headers.get_list("x-content-type-options") == ["nosniff"]
        assert response.headers.get_list("x-request-id") == ["abc-123"]


class TestOpenAPI:
    async def test_the_export_documents_each_of_its_formats(
        self, client: httpx.AsyncClient
    ) -> None:
        spec = (await client.get("/openapi.json")).json()
        content = spec["paths"]["/api/audit-events/export"]["get"]["responses"]["200"]["content"]
        assert set(content) == {"application/x-ndjson", "text/csv", "application/fhir+ndjson"}
        assert content["text/csv"]["schema"] == {"type": "string"}

    async def test_lists_every_route_the_app_serves(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        spec = (await client.get("/openapi.json")).json()
        assert spec["openapi"] == "3.1.0"
        app = create_app(settings)
        served = {
            (r.path_format, m.lower())
            for r in app.routes  # type: ignore[attr-defined]
            for m in r.methods - {"HEAD"}
        }  # type: ignore[attr-defined]
        documented = {(path, m) for path, ops in spec["paths"].items() for m in ops}
        assert served == documented
        for ops in spec["paths"].values():
            for op in ops.values():
                assert op["summary"]
                assert "500" in op["responses"]

    async def test_docs_table_is_self_contained(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/docs/table")  # /docs: tests/http/test_explorer.py
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "/healthz" in response.text
        assert "<script" not in response.text and "http://" not in response.text.replace(
            'href="/openapi.json"', ""
        )
