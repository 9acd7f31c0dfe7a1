"""The remote part's per-process object (`RemoteRuntime`), how the lifespan runs it, and its
accessor (`remote_of`).

It holds the declared routes (REMOTE_APIS_FILE), a connection pool of its own for the
upstreams (app/remote/pool.py: it follows no redirect and reads no proxy settings from the
environment), the client-credentials tokens, each route's rate limit, and in cookie mode
the sessions' tokens for other audiences this copy holds (`AudienceTokens`; getting them is
app/remote/lifecycle.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from app.core.settings import Settings
from app.core.settings.remote import RemoteRoute
from app.core.state import HasState, part_of
from app.ratelimit import Limit
from app.remote.pool import UpstreamPool
from app.remote.tokens import ClientTokens
from app.session.lifecycle import REFRESH_MARGIN_SECONDS
from app.session.runtime import SessionRuntime

Key = tuple[uuid.UUID, str]


@dataclass(frozen=True, slots=True)
class AudienceToken:
    token: str  # a secret
    expires_at: float


class AudienceTokens:
    """A copy's tokens for other audiences, and the grants in flight; one per process."""

    def __init__(self, sessions: SessionRuntime) -> None:
        self.sessions = sessions
        self.cached: dict[Key, AudienceToken] = {}
        self.getting: dict[Key, asyncio.Task[AudienceToken]] = {}
        self.grants = 0  # grants this copy sent (tests, metrics)

    def fresh(self, found: AudienceToken | None) -> bool:
        return (
            found is not None and found.expires_at - REFRESH_MARGIN_SECONDS > self.sessions.clock()
        )

    def forget(self, session_id: uuid.UUID, audience: str, token: str) -> None:
        """An upstream refused `token` (401): get another next time."""
        found = self.cached.get((session_id, audience))
        if found is not None and found.token == token:
            self.cached.pop((session_id, audience), None)

    def close(self) -> None:
        for task in list(self.getting.values()):
            task.cancel()
        self.cached.clear()


@dataclass
class RemoteRuntime:
    settings: Settings
    routes: dict[str, RemoteRoute]
    http: UpstreamPool
    clients: ClientTokens
    limits: dict[str, Limit] = field(default_factory=dict)
    audiences: AudienceTokens | None = None  # cookie mode on

    @property
    def own_audience(self) -> str:
        """The audience of the tokens callers and sessions hold (AUTH0_AUDIENCE)."""
        return self.settings.auth0.audience

    def audience_of(self, route: RemoteRoute) -> str:
        return route.audience or self.own_audience


def upstream_pool() -> UpstreamPool:
    """The upstreams' connections (app/remote/service.py sends through them): no proxy from
    the environment, no redirect followed; timeouts are per route, on each request."""
    return UpstreamPool(max_connections=100, max_idle=20, keepalive_expiry=30.0)


@contextlib.asynccontextmanager
async def running_remote(
    settings: Settings,
    tenant_http: httpx.AsyncClient,
    limits: dict[str, Limit],
    sessions: SessionRuntime | None,
) -> AsyncIterator[RemoteRuntime]:
    """The runtime while the app runs; its client closed and its tokens forgotten on exit."""
    routes = {route.name: route for route in settings.remote.routes}
    runtime = RemoteRuntime(
        settings,
        routes,
        upstream_pool(),
        ClientTokens(settings, tenant_http),
        limits,
        AudienceTokens(sessions) if sessions is not None else None,
    )
    try:
        yield runtime
    finally:
        runtime.clients.close()
        if runtime.audiences is not None:
            runtime.audiences.close()
        await runtime.http.aclose()


def remote_of(conn: HasState) -> RemoteRuntime:
    return part_of(conn, "remote", RemoteRuntime)
