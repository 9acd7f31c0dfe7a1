"""`create_app(settings)`: explicit routes, middleware and a lifespan that owns the pool,
the shared HTTP client and the caches. `app.main:app` builds itself from the environment on
first use, so importing this module has no side effects."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from databases import Database
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from app.account import endpoints as account_endpoints
from app.account.services import account_services, running_account_services
from app.audit import digest_endpoints
from app.audit import endpoints as audit_endpoints
from app.audit.batcher import AuditWriter
from app.audit.digests import DigestIssuer
from app.audit.http import record_denial
from app.audit.signing import KeyRing
from app.auth.tokens import TokenVerifier
from app.auth0.management import Auth0Client
from app.core.db import create_database
from app.core.settings import Settings, load_settings
from app.core.state import AppContext
from app.core.tasks import Housekeeping, Purge
from app.fhir import endpoints as fhir_endpoints
from app.fhir.http import OperationOutcomes
from app.http import idempotency, ops, problems
from app.http.middleware import Metrics, RequestContextMiddleware
from app.patients import endpoints as patient_endpoints
from app.ratelimit import ClientRateLimitMiddleware, GlobalRateLimiter, Limit, Quota
from app.session import endpoints as session_endpoints
from app.session.crypto import TokenBox
from app.session.oauth import TenantOAuth
from app.session.resolver import SessionResolver
from app.session.service import SessionService


def all_routes() -> list[BaseRoute]:
    return [
        *ops.routes,
        *patient_endpoints.routes,
        *audit_endpoints.routes_with(fhir_endpoints.EXPORT_FORMATS),
        *digest_endpoints.routes,
        *account_endpoints.routes,
        *fhir_endpoints.routes,
    ]


def middleware(
    settings: Settings, metrics: Metrics, per_ip: Limit | None = None
) -> list[Middleware]:
    """Outermost first: the request envelope sees everything, CORS answers preflights.
    Outside them all, errors under /fhir become OperationOutcomes (app/fhir/http.py)."""
    stack = [
        Middleware(OperationOutcomes),
        Middleware(
            RequestContextMiddleware,
            metrics=metrics,
            max_body_bytes=settings.server.max_body_bytes,
            trusted_proxies=settings.server.trusted_proxies,
            hsts_seconds=settings.server.hsts_seconds,
        ),
    ]
    if settings.server.cors_allowed_origins:
        # Bearer tokens travel in a header, never a cookie: no credentials mode needed.
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.server.cors_allowed_origins,
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "If-Match",
                    "Idempotency-Key",
                    "X-Request-ID",
                ],
                expose_headers=[
                    "ETag",
                    "Location",
                    "Retry-After",
                    "WWW-Authenticate",
                    "X-Request-ID",
                    "Link",
                ],
                allow_credentials=False,
                max_age=600,
            )
        )
    if per_ip is not None:
        # Innermost of the three, inside CORS, so a browser can read the 429.
        stack.append(Middleware(ClientRateLimitMiddleware, limit=per_ip))
    return stack


def create_app(settings: Settings) -> Starlette:
    metrics = Metrics()
    rate_limiter = GlobalRateLimiter(sync_interval=settings.rate_limits.sync_seconds)
    ip_quota = Quota.parse(settings.rate_limits.per_ip)
    user_quota = Quota.parse(settings.rate_limits.per_user)
    per_ip = rate_limiter.limit("ip", ip_quota) if ip_quota else None
    per_user = rate_limiter.limit("user", user_quota) if user_quota else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        database = create_database(
            settings.database.url,
            min_size=settings.database.pool_min_size,
            max_size=settings.database.pool_max_size,
            statement_timeout_ms=settings.database.statement_timeout_ms,
        )
        timeout = httpx.Timeout(
            settings.auth0.timeout_seconds, connect=min(settings.auth0.timeout_seconds, 2.0)
        )
        http = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, limits=httpx.Limits(max_connections=50)
        )
        await database.connect()
        redis_url = (
            settings.rate_limits.redis_url.get_secret_value()
            if settings.rate_limits.redis_url
            else None
        )
        await rate_limiter.start(database, redis_url=redis_url)
        verifier = TokenVerifier(settings, http)
        account = account_services(settings)
        sessions = _session_service(settings, database, http)
        ctx = AppContext(
            settings=settings,
            database=database,
            http=http,
            verifier=verifier,
            auth0=Auth0Client(settings, http),
            account=account,
            audit=AuditWriter(database),
            per_user_limit=per_user,
            on_denied=record_denial,
            sessions=SessionResolver(sessions) if sessions is not None else None,
        )
        housekeeping = Housekeeping(
            database,
            [
                *account.purges(),
                Purge("idempotency keys", idempotency.purge_expired),
                Purge("rate-limit counters", rate_limiter.purge),
                *([Purge("cookie sessions", sessions.purge)] if sessions is not None else []),
            ],
        )
        digests = None
        if settings.audit.digests and settings.audit.signing_key is not None:
            ring = KeyRing.from_setting(settings.audit.signing_key.get_secret_value())
            interval = settings.audit.digest_interval_seconds
            digests = DigestIssuer(database, ring, interval_seconds=interval)
        try:
            async with running_account_services(account, settings.database.url, verifier):
                if sessions is not None:
                    await sessions.start()  # LISTENs for ended and refreshed sessions
                housekeeping.start()
                if digests is not None:
                    digests.start()
                yield {"ctx": ctx}
        finally:
            await housekeeping.stop()
            if sessions is not None:
                await sessions.stop()
            if digests is not None:
                await digests.stop()
            await ctx.audit.aclose()
            await rate_limiter.stop()  # flushes this copy's last counts
            await ctx.auth0.aclose()
            await http.aclose()
            await database.disconnect()

    # Cookie mode off: no /auth/* route at all, so every such path is a 404.
    session_routes = session_endpoints.routes if settings.sessions.enabled else []
    app = Starlette(
        routes=[*all_routes(), *session_routes],
        middleware=middleware(settings, metrics, per_ip),
        exception_handlers=problems.EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.rate_limiter = rate_limiter
    app.state.settings = settings
    return app


def _session_service(
    settings: Settings, database: Database, http: httpx.AsyncClient
) -> SessionService | None:
    """Cookie sessions (app/session/), when SESSION_CLIENT_ID is set."""
    if not settings.sessions.enabled or settings.sessions.encryption_key is None:
        return None
    box = TokenBox(settings.sessions.encryption_key.get_secret_value())
    return SessionService(settings, database, TenantOAuth(settings, http), box)


class _AppFromEnvironment:
    """The ASGI app for `uvicorn app.main:app`: settings are read on the first event."""

    def __init__(self) -> None:
        self._app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            self._app = create_app(load_settings())
        await self._app(scope, receive, send)


app = _AppFromEnvironment()
