"""The auth part's per-process object (`AuthRuntime`) and its accessor (`auth_of`).

The one thing auth needs from a part above it, the access token of a request that carries
a cookie session instead of a bearer token, it asks through `CookieSessions`, a protocol of
its own that the session part satisfies; denials are reported through `DenialHook`, which
the audit part satisfies. Neither part is imported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import HTTPConnection, Request

from app.auth.dpop import DPoPVerifier
from app.auth.tokens import Principal, TokenVerifier
from app.core.errors import AppError
from app.core.settings.auth import AuthSettings
from app.core.state import HasState, part_of
from app.ratelimit import Limit

# Awaited by `requires` for every 401/403 it raises, with the request, the verified
# principal (None for a 401) and the error.
DenialHook = Callable[[Request, Principal | None, AppError], Awaitable[None]]


class CookieSessions(Protocol):
    """Cookie → access token, for a request with the session cookie and no bearer token."""

    def has_cookie(self, conn: HTTPConnection) -> bool: ...

    async def access_token(self, request: Request) -> str:
        """The session's access token (CSRF checked first), or a 401/403/503 `AppError`."""
        ...

    async def refused(self, request: Request, error: AppError) -> None:
        """The verifier refused the session's access token: end the session."""
        ...


@dataclass
class AuthRuntime:
    verifier: TokenVerifier
    policy: AuthSettings | None = None  # what routes demand beyond their permissions
    per_user_limit: Limit | None = None
    on_denied: DenialHook | None = None
    sessions: CookieSessions | None = None  # cookie mode on
    proofs: DPoPVerifier | None = None  # DPoP accepted (DPOP_MODE allowed or required)


def auth_of(conn: HasState) -> AuthRuntime:
    return part_of(conn, "auth", AuthRuntime)
