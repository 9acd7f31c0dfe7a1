"""The per-address limit as ASGI middleware, and the key of a client address."""

from __future__ import annotations

import socket

from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import TooManyRequests
from app.http.problems import problem_response, request_id_of
from app.ratelimit.quota import Limit, retry_after

_IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d


def client_key(host: str) -> str:
    """The per-IP key of a client address: an IPv4 address, or an IPv6 /64 (one subscriber
    line holds a whole /64, so a client could otherwise rotate through addresses).
    `socket` parses in C: `ipaddress` would cost some 20 µs a request."""
    if ":" not in host:
        return host
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return host
    if packed[:12] == _IPV4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


class ClientRateLimitMiddleware:
    """Pure ASGI: 429 problem+json with `Retry-After` when the client's address is over
    `limit`. Put it inside CORS (so browsers can read the 429) and inside the request
    envelope (which resolves trusted proxies into `scope["client"]` and adds the request id
    and security headers). A CORS preflight is answered by CORS and so not counted."""

    def __init__(self, app: ASGIApp, *, limit: Limit) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client:
            wait = self.limit.check(client_key(client[0]))
            if wait is not None:
                error = TooManyRequests(
                    retry_after(wait), "too many requests from this address; try again later"
                )
                await problem_response(error, request_id_of(scope))(scope, receive, send)
                return
        await self.app(scope, receive, send)
