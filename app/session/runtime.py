"""The session part's per-process object (`SessionRuntime`), how the lifespan runs it, and
its accessor (`sessions_of`).

It holds what sessions need between requests in one process: the tenant client (authlib),
the key box for tokens at rest, the verifier of ID, logout and access tokens, the cache of
live sessions with its LISTEN connection, and the refreshes in flight (one task per session,
so concurrent requests of one session share a refresh). The operations on it are
app/session/lifecycle.py (a stored session's life) and app/session/service.py (the flows).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import httpx
from databases import Database

from app.audit.events import Actor
from app.auth.tokens import TokenVerifier
from app.core.settings import Settings
from app.core.state import HasState, part_of
from app.session.cache import Session, SessionCache
from app.session.crypto import TokenBox
from app.session.oauth import TenantOAuth
from app.session.repository import Ended


@dataclass
class SessionRuntime:
    """One per process; `start`/`stop` run the cache's LISTEN connection."""

    settings: Settings
    database: Database
    oauth: TenantOAuth
    box: TokenBox
    verifier: TokenVerifier
    clock: Callable[[], float] = time.time
    cache: SessionCache = field(default_factory=SessionCache)
    refreshing: dict[uuid.UUID, asyncio.Task[Session]] = field(default_factory=dict)
    refresh_grants: int = 0  # refresh grants this copy sent (tests, metrics)

    @property
    def client_id(self) -> str:
        client_id = self.settings.sessions.client_id
        assert client_id is not None  # a runtime exists only in cookie mode
        return client_id

    @property
    def logout_return_url(self) -> str:
        """Where the tenant's logout sends the browser: LOGOUT_RETURN_URL, else {PUBLIC_URL}/."""
        sessions, server = self.settings.sessions, self.settings.server
        return sessions.logout_return_url or f"{server.public_url}/"

    @property
    def idle_seconds(self) -> float:
        return float(self.settings.sessions.idle_seconds)

    @property
    def absolute_seconds(self) -> float:
        return float(self.settings.sessions.absolute_seconds)

    @property
    def touch_seconds(self) -> float:
        """Restart the idle clock at most this often per session and copy: no write per
        request."""
        return min(60.0, self.idle_seconds / 10)

    def actor_for(self, base: Actor, session: Session | Ended) -> Actor:
        """The request's actor as the session's user, in the session's audit scope."""
        return replace(
            base,
            scope=session.scope,
            sub=session.sub,
            session_id=session.sid,
            client_id=self.client_id,
        )

    async def start(self) -> None:
        await self.cache.listener.start(self.settings.database.url)

    async def stop(self) -> None:
        await self.cache.listener.stop()
        for task in list(self.refreshing.values()):
            task.cancel()


def session_runtime(
    settings: Settings, database: Database, http: httpx.AsyncClient, verifier: TokenVerifier
) -> SessionRuntime | None:
    """The runtime cookie mode needs, or None when it is off (no SESSION_CLIENT_ID)."""
    if not settings.sessions.enabled or settings.sessions.encryption_key is None:
        return None
    box = TokenBox(settings.sessions.encryption_key.get_secret_value())
    return SessionRuntime(settings, database, TenantOAuth(settings, http), box, verifier)


@contextlib.asynccontextmanager
async def running_sessions(runtime: SessionRuntime) -> AsyncIterator[SessionRuntime]:
    """LISTEN for ended and refreshed sessions while the app runs."""
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def sessions_of(conn: HasState) -> SessionRuntime:
    return part_of(conn, "sessions", SessionRuntime)
