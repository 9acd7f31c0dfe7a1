"""What the Auth0 client tests share: the stubbed tenant's address and user, settings, fake
time, a client on both, and reading back what was sent."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from app.auth0.management import Auth0Client
from app.core.settings import Settings

BASE = "http://tenant.test"
USER = "auth0|abc"
USER_PATH = "/api/v2/users/auth0%7Cabc"
PROFILE = {"user_id": USER, "email": "abc@example.com", "name": "abc"}


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": "postgresql://x@127.0.0.1/db",
        "auth0_domain": "tenant.example.com",
        "auth0_audience": "https://api.example.com",
        "auth0_client_id": "cid",
        "auth0_client_secret": "secret",
        "app_secret_key": "0123456789abcdef0123456789abcdef-test",
        "auth0_base_url": BASE,
        **overrides,
    }
    return Settings(_env_file=None, **values)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_700_000_000.5
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


def make_client(http: httpx.AsyncClient, fake: FakeTime, **settings: Any) -> Auth0Client:
    return Auth0Client(
        make_settings(**settings),
        http,
        sleep=fake.sleep,
        clock=fake.clock,
        wall_clock=fake.time,
        rand=lambda: 0.0,
    )


def tokens(token: str, expires_in: int = 86400) -> httpx.Response:
    return httpx.Response(200, json={"access_token": token, "expires_in": expires_in})


def bearer(call: Any) -> str:
    return str(call.request.headers.get("authorization"))


def raw_path(call: Any) -> str:
    """The path as sent on the wire (httpx's `url.path` is percent-decoded)."""
    return str(call.request.url.raw_path.decode().split("?")[0])


def sent_json(call: Any) -> Any:
    return json.loads(call.request.content)
