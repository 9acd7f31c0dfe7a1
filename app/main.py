"""`create_app(settings, parts)`: explicit routes, middleware and a lifespan that builds every
part's runtime object (or takes the one `parts` hands in) and puts it in the app's state,
where each part's accessor finds it. `app.main:app` builds itself from the environment on
first use, so importing this module has no side effects."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from databases import Database
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from app.account import endpoints as account_endpoints
from app.account.runtime import (
    AccountRuntime,
    account_runtime,
    cached_profiles,
    running_account,
)
from app.audit import endpoints as audit_endpoints
from app.audit.edge import record_denial
from app.audit.runtime import running_audit
from app.auth import replay
from app.auth.dpop import DPoPVerifier
from app.auth.runtime import AuthRuntime
from app.auth.schemes import api_access
from app.auth.tokens import TokenVerifier
from app.auth0.budget import management_budget
from app.auth0.management import Auth0Client
from app.console import endpoints as console_endpoints
from app.core.settings import Settings, load_settings
from app.core.state import running_core
from app.core.tasks import Housekeeping, Purge
from app.fhir import endpoints as fhir_endpoints
from app.fhir.outcomes import OperationOutcomes
from app.http import idempotency, ops, problems
from app.http.middleware import Metrics, RequestContextMiddleware
from app.http.routing import PrefixFirstRouter
from app.patients import endpoints as patient_endpoints
from app.patients.runtime import running_patients
from app.ratelimit import ClientRateLimitMiddleware, GlobalRateLimiter, Limit
from app.remote import endpoints as remote_endpoints
from app.remote.runtime import running_remote
from app.session import endings
from app.session import endpoints as session_endpoints
from app.session.cookies import SESSION_COOKIE
from app.session.resolver import SessionResolver
from app.session.runtime import running_sessions, session_runtime


@dataclass(frozen=True)
class Parts:
    """Runtime objects to use instead of the ones the lifespan would build (tests pass their
    own in); the lifespan still starts and stops them."""

    account: AccountRuntime | None = None
    auth0: Auth0Client | None = None


def all_routes() -> list[BaseRoute]:
    return [
        *ops.routes,
        *patient_endpoints.routes,
        *audit_endpoints.routes_with(fhir_endpoints.EXPORT_FORMATS),
        *account_endpoints.routes,
        *fhir_endpoints.routes,
    ]


def middleware(
    settings: Settings, metrics: Metrics, per_ip: Limit | None = None
) -> list[Middleware]:
    """Outermost first: the request envelope sees everything, CORS answers preflights.
    Outside them all, errors under /fhir become OperationOutcomes (app/fhir/outcomes.py)."""
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
                    "DPoP",
                    "If-Match",
                    "Idempotency-Key",
                    "X-Request-ID",
                ],
                expose_headers=[
                    "DPoP-Nonce",
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


def dpop_verifier(settings: Settings, database: Database) -> DPoPVerifier | None:
    """The DPoP proof checks, their jti store where the rate limits are; None when off."""
    if settings.dpop.mode == "off":
        return None
    redis = settings.rate_limits.redis_url
    return DPoPVerifier(
        settings.dpop,
        replay.replay_store(database, redis.get_secret_value() if redis else None),
        origin=settings.server.public_url,
        nonce_key=settings.derived_key("dpop-nonce"),
    )


def create_app(settings: Settings, parts: Parts | None = None) -> Starlette:
    parts = parts or Parts()
    metrics = Metrics()
    rate_limiter = GlobalRateLimiter(sync_interval=settings.rate_limits.sync_seconds)
    ip_quota, user_quota = settings.rate_limits.ip_quota, settings.rate_limits.user_quota
    per_ip = rate_limiter.limit("ip", ip_quota) if ip_quota else None
    per_user = rate_limiter.limit("user", user_quota) if user_quota else None
    remote_limits = {
        route.name: rate_limiter.limit(f"remote.{route.name}", route.rate_limit)
        for route in settings.remote.routes
        if route.rate_limit is not None
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            core = await stack.enter_async_context(running_core(settings))
            redis = settings.rate_limits.redis_url
            await rate_limiter.start(
                core.database, redis_url=redis.get_secret_value() if redis else None
            )
            stack.push_async_callback(rate_limiter.stop)  # flushes this copy's last counts
            verifier = TokenVerifier(settings, core.http)
            core.checks["jwks"] = verifier.ready
            budget = management_budget(
                settings.auth0.management_quota,
                core.database,
                redis.get_secret_value() if redis else None,
            )
            if budget is not None:
                stack.push_async_callback(budget.aclose)
            auth0 = parts.auth0 or Auth0Client(settings, core.http, budget=budget)
            stack.push_async_callback(auth0.aclose)
            audit = await stack.enter_async_context(running_audit(core.database, settings.audit))
            patients = await stack.enter_async_context(running_patients(core.database))
            if audit.digests is not None:
                core.reports["audit_digests"] = audit.digests.state
            account = parts.account or account_runtime(settings)
            if account.profiles is None:
                account.profiles = cached_profiles(settings, core.database, auth0)
            await stack.enter_async_context(
                running_account(account, settings.database.url, verifier)
            )
            sessions = session_runtime(settings, core.database, core.http, verifier)
            if sessions is not None:
                await stack.enter_async_context(running_sessions(sessions))
            proofs = dpop_verifier(settings, core.database)
            if proofs is not None:
                stack.push_async_callback(proofs.replays.aclose)
            purges = [
                *account.purges(),
                Purge("idempotency keys", idempotency.purge_expired),
                Purge("rate-limit counters", rate_limiter.purge),
            ]
            if sessions is not None:
                purges.append(Purge("cookie sessions", lambda conn: endings.purge(sessions, conn)))
            if proofs is not None and isinstance(proofs.replays, replay.PostgresReplays):
                purges.append(Purge("DPoP proofs", replay.purge_expired))
            housekeeping = Housekeeping(core.database, purges)
            housekeeping.start()
            stack.push_async_callback(housekeeping.stop)
            auth = AuthRuntime(
                verifier,
                policy=settings.auth,
                per_user_limit=per_user,
                on_denied=record_denial,
                sessions=SessionResolver(sessions) if sessions is not None else None,
                proofs=proofs,
            )
            remote = await stack.enter_async_context(
                running_remote(settings, core.http, remote_limits, sessions)
            )
            yield {
                "core": core,
                "auth": auth,
                "auth0": auth0,
                "audit": audit,
                "patients": patients,
                "account": account,
                "sessions": sessions,
                "remote": remote,
            }

    # Cookie mode off: no /auth/* or /console route at all, so every such path is a 404.
    session_routes = (
        [*session_endpoints.routes, *console_endpoints.routes] if settings.sessions.enabled else []
    )
    # No declared remote API: no /remote route at all.
    remote_routes = remote_endpoints.routes if settings.remote.routes else []
    app = Starlette(
        middleware=middleware(settings, metrics, per_ip),
        exception_handlers=problems.EXCEPTION_HANDLERS,
    )
    # A forwarded call is matched against /remote's route first, not after every other.
    app.router = PrefixFirstRouter(
        [*all_routes(), *session_routes, *remote_routes], prefix="/remote/", lifespan=lifespan
    )
    app.state.metrics = metrics
    app.state.rate_limiter = rate_limiter
    app.state.settings = settings
    app.state.openapi_access = api_access(
        settings.dpop, cookie=SESSION_COOKIE if settings.sessions.enabled else None
    )
    return app


class _AppFromEnvironment:
    """The ASGI app for `uvicorn app.main:app`: settings are read on the first event."""

    def __init__(self) -> None:
        self._app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            self._app = create_app(load_settings())
        await self._app(scope, receive, send)


app = _AppFromEnvironment()
