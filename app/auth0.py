"""Auth0 Management and Authentication API client (placeholder contract; see issue 4)."""

from __future__ import annotations

import httpx

from app.settings import Settings


class Auth0Client:
    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http

    async def aclose(self) -> None:
        return None
