"""Browser-facing hardening: security headers, CORS allow-list, trusted proxies."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import httpx
import pytest
import respx

from app.core.settings import ConfigError, load_settings
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem, bearer

FRONTEND = "https://app.example.com"


class TestSecurityHeaders:
    @pytest.mark.parametrize(
        ("method", "path", "status"),
        [
            ("GET", "/healthz", 200),
            ("GET", "/no-such-path", 404),
            ("GET", "/api/me", 401),
            ("POST", "/healthz", 405),
        ],
    )
    async def test_on_every_response(
        self, client: httpx.AsyncClient, method: str, path: str, status: int
    ) -> None:
        response = await client.request(method, path)
        assert response.status_code == status
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["strict-transport-security"].startswith("max-age=31536000")
        assert "server" not in response.headers

    async def test_on_a_413_sent_before_the_app(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/healthz", content=b"x" * (2 * 1024 * 1024))
        assert response.status_code == 413
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"

    async def test_hsts_when_configured(
        self, database: ProvisionedDatabase, tenant: respx.MockRouter
    ) -> None:
        async with running_app(make_settings(database, hsts_seconds=31536000)) as http:
            response = await http.get("/healthz")
        assert response.headers["strict-transport-security"] == (
            "max-age=31536000; includeSubDomains"
        )


class TestCors:
    async def test_no_cors_headers_unless_configured(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz", headers={"Origin": FRONTEND})
        assert "access-control-allow-origin" not in response.headers

    async def test_preflight_from_allowed_origin(
        self, database: ProvisionedDatabase, tenant: respx.MockRouter
    ) -> None:
        settings = make_settings(database, cors_allowed_origins=FRONTEND)
        async with running_app(settings) as http:
            response = await http.options(
                "/api/patients",
                headers={
                    "Origin": FRONTEND,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type, "
                    "idempotency-key",
                },
            )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == FRONTEND
        assert response.headers["access-control-max-age"] == "600"
        assert "access-control-allow-credentials" not in response.headers
        assert "idempotency-key" in response.headers["access-control-allow-headers"].lower()

    async def test_other_origin_gets_no_grant(
        self, database: ProvisionedDatabase, tenant: respx.MockRouter
    ) -> None:
        settings = make_settings(database, cors_allowed_origins=FRONTEND)
        async with running_app(settings) as http:
            preflight = await http.options(
                "/api/me",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
            )
            simple = await http.get("/healthz", headers={"Origin": "https://evil.example"})
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
        assert "access-control-allow-origin" not in simple.headers

    @pytest.mark.parametrize("origins", ["*", "https://app.example.com/path", "app.example.com"])
    def test_wildcards_and_non_origins_are_refused(self, origins: str) -> None:
        with pytest.raises(ConfigError, match="CORS_ALLOWED_ORIGINS"):
            load_settings(
                database_url="postgresql://u@h/d",
                auth0_domain="t.example.com",
                auth0_audience="a",
                auth0_client_id="c",
                auth0_client_secret="s",
                app_secret_key="0123456789abcdef0123456789abcdef-test",
                cors_allowed_origins=origins,
                _env_file=None,
            )


class TestTrustedProxies:
    async def source_ip(
        self,
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
        forwarded: str,
        **overrides: object,
    ) -> str:
        async with running_app(make_settings(database, **overrides)) as http:
            response = await http.post(
                "/api/registrations",
                headers={**bearer(mint("auth0|proxied")), "X-Forwarded-For": forwarded},
            )
        assert response.status_code == 201
        return str(
            await owner.fetchval(
                "SELECT host(source_ip) FROM audit_events WHERE action = 'user.registered'"
            )
        )

    async def test_forwarded_for_is_ignored_from_an_untrusted_peer(
        self,
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
    ) -> None:
        assert await self.source_ip(database, owner, mint, "203.0.113.9") == "127.0.0.1"

    async def test_client_address_from_a_trusted_proxy(
        self,
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
    ) -> None:
        # The left-most entry is whatever the client claimed; the proxy appended the rest.
        address = await self.source_ip(
            database, owner, mint, "198.51.100.7, 203.0.113.9", trusted_proxies="127.0.0.0/8"
        )
        assert address == "203.0.113.9"

    async def test_a_garbled_chain_keeps_the_proxy_address(
        self,
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
    ) -> None:
        address = await self.source_ip(
            database, owner, mint, "not-an-ip", trusted_proxies="127.0.0.1"
        )
        assert address == "127.0.0.1"

    def test_bad_proxy_setting_is_named(self) -> None:
        with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
            load_settings(
                database_url="postgresql://u@h/d",
                auth0_domain="t.example.com",
                auth0_audience="a",
                auth0_client_id="c",
                auth0_client_secret="s",
                app_secret_key="0123456789abcdef0123456789abcdef-test",
                trusted_proxies="10.0.0.0/33",
                _env_file=None,
            )


class TestRateLimits:
    async def test_per_address_on_every_route(
        self, database: ProvisionedDatabase, owner: asyncpg.Connection, tenant: respx.MockRouter
    ) -> None:
        settings = make_settings(database, rate_limit_per_ip="3/60")
        async with running_app(settings) as http:
            statuses = [(await http.get("/healthz")).status_code for _ in range(3)]
            refused = await http.get("/healthz")
            other_route = await http.get("/api/me")
        assert statuses == [200, 200, 200]
        for response in (refused, other_route):
            assert_problem(response, 429)
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["x-request-id"]
            assert response.headers["cache-control"] == "no-store"
        # The final flush on shutdown shares this copy's count with the others.
        assert await owner.fetchval("SELECT sum(count) FROM rate_counters") >= 3

    async def test_per_user_after_verification(
        self, database: ProvisionedDatabase, mint: Callable[..., str], tenant: respx.MockRouter
    ) -> None:
        settings = make_settings(database, rate_limit_per_user="2/60")
        async with running_app(settings) as http:
            alice = [
                (await http.get("/api/me", headers=bearer(mint("auth0|alice")))).status_code
                for _ in range(3)
            ]
            bob = await http.get("/api/me", headers=bearer(mint("auth0|bob")))
        assert alice == [200, 200, 429]
        assert bob.status_code == 200

    @pytest.mark.parametrize("value", ["600", "0/60", "ten/60", "600/0"])
    def test_malformed_limit_is_named(self, value: str) -> None:
        with pytest.raises(ConfigError, match="RATE_LIMIT_PER_IP"):
            load_settings(
                database_url="postgresql://u@h/d",
                auth0_domain="t.example.com",
                auth0_audience="a",
                auth0_client_id="c",
                auth0_client_secret="s",
                app_secret_key="0123456789abcdef0123456789abcdef-test",
                rate_limit_per_ip=value,
                _env_file=None,
            )
