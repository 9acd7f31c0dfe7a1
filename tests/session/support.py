"""What the cookie-session tests share: settings with cookie mode on, and a browser's sign-in
through the stand-in tenant (tests/fixtures/standin.py) into the app under test.

Not a test module; `conftest.py` registers it for pytest's assertion rewriting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
from cryptography.fernet import Fernet

from app.core.settings import Settings
from app.session.cookies import SESSION_COOKIE, TX_COOKIE
from devkit.db import ProvisionedDatabase
from tests.fixtures.settings import make_settings
from tests.fixtures.standin import SESSION_CLIENT_ID, SESSION_CLIENT_SECRET, sign_in

PUBLIC_URL = "https://app.test"
ENCRYPTION_KEY = Fernet.generate_key().decode()


def session_settings(database: ProvisionedDatabase, **overrides: Any) -> Settings:
    """The test settings with cookie sessions on, for the stand-in's session client."""
    values: dict[str, Any] = {
        "session_client_id": SESSION_CLIENT_ID,
        "session_client_secret": SESSION_CLIENT_SECRET,
        "public_url": PUBLIC_URL,
        "session_encryption_key": ENCRYPTION_KEY,
    }
    return make_settings(database, **(values | overrides))


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Each cookie the response sets, by name: its whole Set-Cookie line."""
    found: dict[str, str] = {}
    for line in response.headers.get_list("set-cookie"):
        found[line.split("=", 1)[0]] = line
    return found


def cookie_value(response: httpx.Response, name: str) -> str:
    return set_cookies(response)[name].split(";", 1)[0].split("=", 1)[1]


def cleared(response: httpx.Response, name: str = SESSION_COOKIE) -> bool:
    line = set_cookies(response).get(name, "")
    return line.startswith(f"{name}=;") and "Max-Age=0" in line


def with_cookie(value: str, *, csrf: bool = True, **headers: str) -> dict[str, str]:
    """Headers of a browser request carrying the session cookie (and X-CSRF: 1)."""
    sent = {"Cookie": f"{SESSION_COOKIE}={value}", **headers}
    if csrf:
        sent["X-CSRF"] = "1"
    return sent


@dataclass
class Started:
    """A sign-in begun at /auth/login: the tx cookie and the tenant URL with its params."""

    tx_cookie: str
    authorize_url: str

    @property
    def params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.authorize_url).query).items()}


async def start_login(app: httpx.AsyncClient, **params: str) -> Started:
    response = await app.get("/auth/login", params=params)
    assert response.status_code == 302, response.text
    return Started(cookie_value(response, TX_COOKIE), response.headers["location"])


async def tenant_redirect(started: Started, username: str = "alice") -> str:
    """The browser at the tenant: signs in; the callback path and query it is sent back to."""
    async with httpx.AsyncClient() as browser:
        location = await sign_in(browser, started.authorize_url, username)
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL
    return f"{parts.path}?{parts.query}"


async def callback(app: httpx.AsyncClient, started: Started, path: str) -> httpx.Response:
    return await app.get(path, headers={"Cookie": f"{TX_COOKIE}={started.tx_cookie}"})


async def login(app: httpx.AsyncClient, username: str = "alice", **params: str) -> str:
    """Signs a browser in through the tenant; the session cookie's value."""
    started = await start_login(app, **params)
    response = await callback(app, started, await tenant_redirect(started, username))
    assert response.status_code == 302, response.text
    return cookie_value(response, SESSION_COOKIE)


async def session_rows(owner: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await owner.fetch("SELECT * FROM browser_sessions ORDER BY created_at"))


async def make_due(owner: asyncpg.Connection, seconds: float = 10) -> None:
    """Every session's access token now expires within the refresh margin."""
    await owner.execute(
        "UPDATE browser_sessions SET access_expires_at = now() + make_interval(secs => $1)",
        seconds,
    )
