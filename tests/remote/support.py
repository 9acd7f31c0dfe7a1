"""What the remote-API tests share: the route table, the app running behind httpx and as
a bare ASGI app, and a raw call that sends a path exactly as written (httpx would
normalise `..` away) and counts the answer's bytes without keeping them.

Not a test module; `conftest.py` registers it for pytest's assertion rewriting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Message

from app.core.settings import Settings
from app.main import create_app
from devkit.db import ProvisionedDatabase
from tests.fixtures.standin import StandIn
from tests.fixtures.tenant import AUDIENCE
from tests.session.support import session_settings

LABS = "https://labs.test.local"  # a second API, not the service's own audience


def table_entries(url: str) -> dict[str, dict[str, Any]]:
    every = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return {
        "echo": {
            "upstream": f"{url}/echo",
            "methods": every,
            "token": "none",
            "max_request_bytes": 1000,
        },
        "plain": {"upstream": url, "token": "none"},
        "user": {"upstream": url, "token": "user"},
        "other": {"upstream": url, "token": "user", "audience": LABS},
        "client": {"upstream": url, "token": "client", "audience": LABS, "scopes": ["read:labs"]},
        "uoc": {"upstream": url, "token": "user_or_client", "audience": LABS},
        "uoc_own": {"upstream": url, "token": "user_or_client", "audience": AUDIENCE},
        "uon": {"upstream": url, "token": "user_or_none"},
        "perm": {"upstream": url, "token": "user", "permission": "read:labs"},
        "client_rw": {
            "upstream": url,
            "token": "client",
            "audience": LABS,
            "methods": ["GET", "POST"],
        },
        "slow": {"upstream": url, "token": "none", "timeout_seconds": 0.5},
        "small": {"upstream": url, "token": "none", "max_response_bytes": 1000},
        "big": {"upstream": url, "token": "none", "max_response_bytes": 16 * 1024 * 1024},
        "limited": {"upstream": url, "token": "none", "rate_limit": "2/60"},
        "down": {"upstream": "http://127.0.0.1:9", "token": "none"},
    }


def write_table(directory: Path, url: str) -> Path:
    path = directory / "remote-apis.json"
    path.write_text(json.dumps({"apis": table_entries(url)}))
    return path


def remote_settings(database: ProvisionedDatabase, table: Path, **overrides: Any) -> Settings:
    return session_settings(database, remote_apis_file=str(table), **overrides)


@dataclass
class Running:
    http: httpx.AsyncClient
    asgi: ASGIApp
    standin: StandIn


@contextlib.asynccontextmanager
async def running(settings: Settings, standin: StandIn) -> AsyncIterator[Running]:
    """The app with its lifespan; the upstream on loopback is reached for real (respx lets
    every request to 127.0.0.1 through)."""
    standin.router.route(host="127.0.0.1").pass_through()
    standin.state.other_audiences.add(LABS)
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Running(http, manager.app, standin)


@dataclass
class RawAnswer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    size: int = 0
    complete: bool = False  # the last body message came (a cut answer never sends it)
    body_messages: int = 0


async def raw_call(
    app: ASGIApp,
    method: str,
    raw_path: bytes,
    headers: dict[str, str] | None = None,
    *,
    keep_body: bool = True,
) -> RawAnswer:
    """One request straight into the ASGI app with `raw_path` as sent on the wire (its
    query, if any, after the `?`)."""
    raw_path, _, query = raw_path.partition(b"?")
    path = raw_path.decode("latin-1")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    answer = RawAnswer()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected until the answer is over
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            answer.size += len(chunk)
            answer.body_messages += 1
            answer.complete = not message.get("more_body", False)
            if keep_body:
                answer.body += chunk

    await app(scope, receive, send)
    return answer


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
