"""A stand-in remote API for `python -m app dev`, the tests and the `proxy` bench: it says who
called it, from the token it received, and never shows the token itself.

    GET  /whoami         {"scheme", "token_sha256", "claims": {sub, aud, azp, ...}} or anonymous
    ANY  /echo/{path}    the method, raw path, query, headers (minus Authorization), body size
    GET  /redirect       302 to another site (a proxy must pass it back, not follow it)
    GET  /bytes/{n}      n bytes, streamed in 64 KiB chunks
    GET  /slow/{ms}      answers after ms milliseconds
    GET  /status/{code}  an empty answer with that status

It also sends the headers a proxy must drop (Set-Cookie, HSTS, CORS, CSP), so a test can see
them gone. `Upstream.seen` keeps every request it served (the tokens among them, for tests
to compare; never logged). `serve_upstream` runs it with uvicorn on a loopback port in a
thread of its own; `app` is one that keeps nothing, for the `proxy` benchmark.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
CHUNK = 64 * 1024
# What a proxy in front of it must never pass to a browser.
DROPPED_BY_PROXY = {
    "Set-Cookie": "upstream_session=1; Path=/",
    "Strict-Transport-Security": "max-age=1",
    "Access-Control-Allow-Origin": "*",
    "Content-Security-Policy": "default-src *",
}


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    authorization: str | None


@dataclass
class Upstream:
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    keep: bool = True  # remember what it served (not under a benchmark's load)

    def tokens(self) -> list[str]:
        """The tokens requests carried (without their scheme)."""
        return [s.authorization.partition(" ")[2] for s in self.seen if s.authorization]


def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified (a stand-in only shows who it says it is); {} if opaque."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = orjson.loads(payload)
    except (ValueError, orjson.JSONDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def create_upstream_app(upstream: Upstream) -> Starlette:
    def remember(request: Request) -> Seen:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        seen = Seen(
            request.method,
            raw.decode("latin-1"),
            {k: v for k, v in request.headers.items() if k != "authorization"},
            request.headers.get("authorization"),
        )
        if upstream.keep:
            upstream.seen.append(seen)
        return seen

    async def whoami(request: Request) -> Response:
        remember(request)
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if not token:
            return JSONResponse({"caller": "anonymous"}, headers=DROPPED_BY_PROXY)
        claims = unverified_claims(token)
        shown = {k: claims[k] for k in ("sub", "aud", "azp", "scope", "gty") if k in claims}
        return JSONResponse(
            {
                "caller": "client" if claims.get("gty") == "client-credentials" else "token",
                "scheme": scheme,
                "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                "claims": shown,
            },
            headers=DROPPED_BY_PROXY,
        )

    async def echo(request: Request) -> Response:
        seen = remember(request)
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return JSONResponse(
            {
                "method": request.method,
                "raw_path": seen.raw_path,
                "query": request.url.query,
                "headers": seen.headers,
                "body_bytes": size,
            },
            headers={**DROPPED_BY_PROXY, "X-Upstream": "echo", "Connection": "x-hop"},
        )

    async def redirect(request: Request) -> Response:
        remember(request)
        return Response(status_code=302, headers={"Location": "https://elsewhere.example/x"})

    async def many_bytes(request: Request) -> Response:
        remember(request)
        total = int(request.path_params["n"])

        async def body() -> AsyncIterator[bytes]:
            block = b"x" * CHUNK
            left = total
            while left > 0:
                yield block[: min(CHUNK, left)]
                left -= CHUNK

        return StreamingResponse(
            body(),
            media_type="application/octet-stream",
            headers={"Content-Length": str(total)} if request.query_params.get("sized") else {},
        )

    async def slow(request: Request) -> Response:
        remember(request)
        await asyncio.sleep(int(request.path_params["ms"]) / 1000)
        return JSONResponse({"slept_ms": int(request.path_params["ms"])})

    async def status(request: Request) -> Response:
        remember(request)
        return Response(status_code=int(request.path_params["code"]))

    return Starlette(
        routes=[
            Route("/whoami", whoami, methods=METHODS),
            Route("/echo/{path:path}", echo, methods=METHODS),
            Route("/redirect", redirect),
            Route("/bytes/{n:int}", many_bytes),
            Route("/slow/{ms:int}", slow),
            Route("/status/{code:int}", status, methods=METHODS),
        ]
    )


# `uvicorn devkit.upstream:app`: the benchmark's upstream (bench/harness/launch.py).
app = create_upstream_app(Upstream(keep=False))


@contextlib.contextmanager
def serve_upstream(host: str = "127.0.0.1", port: int = 0) -> Iterator[Upstream]:
    """The stand-in upstream on `host:port` (0: a free port) in a thread, stopped on exit."""
    upstream = Upstream()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    upstream.url = f"http://{host}:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        create_upstream_app(upstream),
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield upstream
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
