"""`/remote/{name}/...`: a declared remote API, forwarded with the route's token.

Order of checks, each before anything is sent upstream: the route exists and allows the
method (404, 405); the path cannot leave the route (400); the caller (a bearer token, or
the session cookie with `X-CSRF: 1`, or nobody where the route allows it: 401/403); the
route's rate limit (429); the declared body size (413). Then the call goes out with the
rule's token, its answer comes back as it is (a redirect is not followed), streamed both
ways within the route's caps, and one audit event records it once the answer is over.
An upstream 401 to a token the service got itself (a client token, a session's token for
another audience) gets one new token and one more try, when the call had no body to
replay.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from app.audit.edge import actor_from
from app.audit.events import Event
from app.audit.runtime import audit_of
from app.auth.requires import AuthRequirement, authenticate
from app.auth.runtime import auth_of
from app.core.errors import (
    AppError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UpstreamError,
)
from app.core.metrics import REMOTE_CALLS
from app.core.settings.remote import METHODS, RemoteRoute
from app.remote import forward, service
from app.remote.events import forwarded_event
from app.remote.runtime import RemoteRuntime, remote_of
from app.remote.service import Caller, Credential
from app.session.cookies import SESSION_COOKIE

logger = logging.getLogger(__name__)


def _route(runtime: RemoteRuntime, request: Request) -> RemoteRoute:
    route = runtime.routes.get(request.path_params["name"])
    if route is None:
        raise NotFound("no remote API of that name")
    if request.method not in route.methods:
        allowed = ", ".join(sorted(route.methods))
        raise MethodNotAllowed(f"this remote API allows {allowed}", headers={"Allow": allowed})
    return route


def _path(request: Request, route: RemoteRoute) -> str:
    raw = request.scope.get("raw_path") or quote(request.scope["path"]).encode("ascii")
    raw = raw.split(b"?", 1)[0]
    prefix = route.prefix.encode("ascii")
    if not raw.startswith(prefix):
        raise BadRequest("the path must start with " + route.prefix)
    try:
        return forward.remote_path(raw[len(prefix) :])
    except forward.PathRefused as exc:
        raise BadRequest(f"refused: {exc}") from None


async def _caller(request: Request, route: RemoteRoute) -> Caller:
    """The caller, verified; nobody only where the route allows it. Credentials sent are
    always checked (a bad token is a 401 even on an open route)."""
    auth = auth_of(request)
    has_bearer = bool(request.headers.getlist("authorization"))
    has_cookie = auth.sessions is not None and SESSION_COOKIE in request.cookies
    if not has_bearer and not has_cookie and route.anonymous_allowed:
        return Caller("anonymous")
    permissions = (route.permission,) if route.permission else ()
    principal = await authenticate(request, AuthRequirement(permissions))
    if has_bearer:
        _, _, token = request.headers["authorization"].partition(" ")
        return Caller("bearer", principal, bearer=token.strip())
    return Caller("cookie", principal, session=getattr(request.state, "session", None))


def _limit(runtime: RemoteRuntime, route: RemoteRoute, request: Request, caller: Caller) -> None:
    limit = runtime.limits.get(route.name)
    if limit is None:
        return
    client = request.client
    key = caller.principal.sub if caller.principal else (client.host if client else "-")
    limit.enforce(key)


def _declared_length(request: Request, route: RemoteRoute) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise BadRequest("Content-Length must be a number")
    if int(value) > route.max_request_bytes:
        raise PayloadTooLarge(
            f"the body exceeds this remote API's limit of {route.max_request_bytes} bytes"
        )
    return int(value)


async def forward_call(request: Request) -> Response:
    runtime = remote_of(request)
    route = _route(runtime, request)
    path = _path(request, route)
    caller = await _caller(request, route)
    _limit(runtime, route, request, caller)
    length = _declared_length(request, route)
    url = forward.upstream_url(route.upstream, path, request.scope.get("query_string", b""))
    client = request.client
    headers = forward.request_headers(
        list(request.headers.items()),
        client=client.host if client else None,
        public_url=runtime.settings.server.public_url,
        prefix=route.prefix,
        request_id=getattr(request.state, "request_id", None),
    )
    sent = [0]
    body: AsyncIterator[bytes] | None = None
    if length or "transfer-encoding" in request.headers:
        body = service.capped(request.stream(), route.max_request_bytes, sent)
        if length is not None:
            headers.append(("Content-Length", str(length)))
    credential = service.NONE
    record = _Recorder(request, route, caller)
    try:
        credential = await service.credential(runtime, route, caller)
        upstream = await service.send(
            runtime, route, request.method, url, headers, body, credential
        )
        if upstream.status == 401 and credential.renewable and body is None:
            # Refused (revoked, or expired early): one new token, one more try, with
            # nothing to replay.
            await upstream.close()
            credential = await service.credential(runtime, route, caller, refused=credential.token)
            upstream = await service.send(
                runtime, route, request.method, url, headers, body, credential
            )
    except AppError as error:
        if not isinstance(error, PayloadTooLarge) or sent[0]:
            await record(error.status, None, sent[0], 0, credential, error.detail)
        raise
    declared = upstream.header("content-length") or ""
    if declared.isdigit() and int(declared) > route.max_response_bytes:
        await upstream.close()
        too_large = UpstreamError(f"the remote API {route.name} answered more than its limit")
        await record(502, upstream.status, sent[0], 0, credential, too_large.detail)
        raise too_large
    return Relayed(upstream, route, record, credential, sent, _nonce(request))


def _nonce(request: Request) -> str | None:
    value = getattr(request.state, "dpop_nonce", None)
    return value if isinstance(value, str) else None


class _Recorder:
    """Records the call's one audit event and counts it in the metrics."""

    def __init__(self, request: Request, route: RemoteRoute, caller: Caller) -> None:
        self.request = request
        self.route = route
        self.caller = caller

    async def __call__(
        self,
        status: int,
        upstream_status: int | None,
        sent: int,
        received: int,
        credential: Credential,
        reason: str | None = None,
    ) -> None:
        REMOTE_CALLS.labels(route=self.route.name, status=str(status)).inc()
        event: Event = forwarded_event(
            route=self.route.name,
            method=self.request.method,
            status=status,
            upstream_status=upstream_status,
            sent_bytes=sent,
            received_bytes=received,
            rule=self.route.token,
            attached=credential.kind,
            audience=credential.audience,
            reason=reason,
        )
        try:
            actor = actor_from(self.request, self.caller.principal)
            await audit_of(self.request).writer.record(actor, [event])
        except Exception:
            logger.exception(
                "recording a forwarded call failed",
                extra={"request_id": getattr(self.request.state, "request_id", None)},
            )


class ResponseTooLarge(Exception):
    """The upstream's answer passed the route's cap while being relayed: the connection is
    cut (the status line is already sent)."""


WHOLE_BYTES = 64 * 1024  # an answer declared this long or shorter is sent in one piece


class Relayed(StreamingResponse):
    """The upstream's answer, relayed as it streams in (or, when it declared a length of
    at most `WHOLE_BYTES`, read whole and sent in one message: no task watching for the
    client leaving, no message per chunk); recorded when it is over."""

    def __init__(
        self,
        upstream: service.Answer,
        route: RemoteRoute,
        record: _Recorder,
        credential: Credential,
        sent: list[int],
        nonce: str | None,
    ) -> None:
        self.upstream = upstream
        self.route = route
        self.record = record
        self.credential = credential
        self.sent = sent
        self.received = 0
        declared = upstream.header("content-length") or ""
        self.whole = declared.isdigit() and int(declared) <= WHOLE_BYTES
        super().__init__(self._relay(), status_code=upstream.status)
        raw: list[tuple[bytes, bytes]] = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in forward.response_headers(upstream.headers)
        ]
        if nonce is not None:
            raw.append((b"dpop-nonce", nonce.encode("latin-1")))
        self.raw_headers = raw

    async def _relay(self) -> AsyncIterator[bytes]:
        limit = self.route.max_response_bytes
        async for chunk in self.upstream.chunks():
            self.received += len(chunk)
            if self.received > limit:
                raise ResponseTooLarge(self.route.name)
            yield chunk

    async def _send_whole(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        try:
            body = b"".join([chunk async for chunk in self._relay()])
        except (ResponseTooLarge, service.UpstreamBroke):
            # As when streaming: the status line goes, then the connection is cut.
            await send(start | {"headers": self.raw_headers})
            raise
        await send(start | {"headers": self.raw_headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason: str | None = None
        try:
            if self.whole:
                await self._send_whole(send)
            else:
                await super().__call__(scope, receive, send)
        except ResponseTooLarge:
            reason = "the answer passed the route's limit"
            raise
        except service.UpstreamBroke as exc:
            reason = f"the upstream's answer broke off ({exc})"
            raise
        finally:
            await self.upstream.close()
            await self.record(
                self.status_code,
                self.upstream.status,
                self.sent[0],
                self.received,
                self.credential,
                reason,
            )


routes: list[BaseRoute] = [
    Route("/remote/{name}/{rest:path}", forward_call, methods=sorted(METHODS)),
]
