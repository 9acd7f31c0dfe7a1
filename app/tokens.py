"""Access-token verification (placeholder contract; see issue 3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from app.errors import Unauthorized
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    permissions: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    org_id: str | None = None
    client_id: str | None = None
    sid: str | None = None
    jti: str | None = None
    exp: int = 0
    iat: int | None = None
    amr: tuple[str, ...] = ()
    email_verified: bool | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class TokenVerifier:
    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http

    async def ready(self) -> bool:
        return True

    async def verify_access_token(self, token: str) -> Principal:
        raise Unauthorized("token verification is not implemented yet")
