"""The request envelope: request id, body-size limit, access log, metrics, last-resort 500,
and where the request's time went (app/core/timings.py).

A pure ASGI middleware (Starlette's BaseHTTPMiddleware costs a task per request). It logs
the path without its query string: search parameters can hold patient names.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import timings
from app.core.errors import AppError, PayloadTooLarge
from app.core.metrics import exposition, include_process_wide
from app.http.problems import problem_response

logger = logging.getLogger(__name__)  # the access log, and unexpected errors

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Request counts and latency by route template; one registry per app (tests build many
    apps in one process), which also shows the process-wide metrics of `app.core.metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        include_process_wide(self.registry)
        self.requests = Counter(
            "http_requests",
            "HTTP requests served.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to serve an HTTP request.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.phases = Histogram(
            "http_request_phase_seconds",
            "Time a request spent in one phase: waiting for a pooled connection, its page "
            "query, its audit commit, the Management API, sending its answer.",
            ["route", "phase"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """What `/metrics` answers: this app's and the process's metrics, or with several
        workers, every worker's summed."""
        return exposition(self.registry)


class BodyTooLarge(Exception):
    pass


Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Sent on every response. The API serves personal data, so nothing is cached unless a
# handler says otherwise, and nothing is framed, sniffed or leaked through the Referer.
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
}


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        trusted_proxies: list[str] | None = None,
        hsts_seconds: int = 0,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.trusted: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in trusted_proxies or []
        ]
        self.extra_headers = dict(_SECURITY_HEADERS)
        if hsts_seconds:
            self.extra_headers["Strict-Transport-Security"] = (
                f"max-age={hsts_seconds}; includeSubDomains"
            )
        # Pre-encoded, lower-case (as ASGI servers send them), with the no-store default.
        self._raw_defaults = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in {**self.extra_headers, "Cache-Control": "no-store"}.items()
        ]
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._phase_children: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        timed = timings.begin()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        if self.trusted:
            _apply_forwarded_for(scope, self.trusted)
        status = 500
        response_started = False
        limit = self.max_body_bytes

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._send_error(send, PayloadTooLarge(_too_large(limit)), request_id)
            self._finish(scope, 413, started, request_id, timings.finish(timed))
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                # Raw header pairs: a response's own values win over the defaults (a page
                # with scripts, such as /docs, sends its own Content-Security-Policy).
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != b"x-request-id"
                ]
                present = {name.lower() for name, _ in headers}
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                headers += [pair for pair in self._raw_defaults if pair[0] not in present]
                message["headers"] = headers
            with timings.phase("send"):
                await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge:
            status = 413
            if not response_started:
                await self._send_error(send, PayloadTooLarge(_too_large(limit)), request_id)
        except Exception:
            status = 500
            logger.exception(
                "unhandled exception",
                extra={"request_id": request_id, "method": scope["method"], "path": scope["path"]},
            )
            if not response_started:
                await self._send_error(send, AppError("an unexpected error occurred"), request_id)
        finally:
            self._finish(scope, status, started, request_id, timings.finish(timed))

    async def _send_error(self, send: Send, error: AppError, request_id: str) -> None:
        response = problem_response(error, request_id)
        response.headers["X-Request-ID"] = request_id
        response.headers["Cache-Control"] = "no-store"
        response.headers.update(self.extra_headers)

        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        await response({"type": "http"}, no_body, send)

    def _finish(
        self,
        scope: Scope,
        status: int,
        started: float,
        request_id: str,
        phases: dict[str, float],
    ) -> None:
        elapsed = time.perf_counter() - started
        route = _route_template(scope)
        # Any token is a valid method: metrics label the known ones, so a client cannot
        # make the label set (and this cache) grow without bound.
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        children = self._children.get((method, route, status))
        if children is None:  # labelled children, looked up once per method, route, status
            labels = (method, route, str(status))
            children = self._children[(method, route, status)] = (
                self.metrics.requests.labels(*labels),
                self.metrics.latency.labels(*labels),
            )
        children[0].inc()
        children[1].observe(elapsed)
        for name, seconds in phases.items():
            child = self._phase_children.get((route, name))
            if child is None:
                child = self._phase_children[(route, name)] = self.metrics.phases.labels(
                    route, name
                )
            child.observe(seconds)
        logger.info(
            "request",
            extra={
                "request_id": request_id,
                "method": method,
                "path": scope["path"],
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "phases_ms": {name: round(s * 1000, 3) for name, s in phases.items()},
            },
        )


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _trusted(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _apply_forwarded_for(scope: Scope, networks: list[Network]) -> None:
    """Replace the peer address by the client's when the peer is a trusted proxy: the
    right-most X-Forwarded-For entry that is not itself a trusted proxy."""
    client = scope.get("client")
    if not client or not _trusted(client[0], networks):
        return
    forwarded = [
        value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"
    ]
    chain = [hop.strip() for value in forwarded for hop in value.split(",") if hop.strip()]
    for hop in reversed(chain):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            return  # a garbled chain: keep the proxy's own address rather than guess
        if not _trusted(address, networks):
            scope["client"] = (address, 0)
            return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> str:
    return f"the body exceeds the limit of {limit} bytes"


def _route_template(scope: Scope) -> str:
    """The matched route's path template, so metrics do not explode with ids."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"
