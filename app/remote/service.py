"""The remote part's operations: which token a call carries (the route's rule and who is
calling), and sending the call upstream.

Token rules (docs/remote-apis.md has the table): `none` attaches nothing; `user` the
session's token for the route's audience, or a bearer caller's own token when it was issued
for that audience (else 403); `client` the service's client-credentials token;
`user_or_client` the user's token where `user` would attach one, else the client token;
`user_or_none` the user's token, or nothing for an anonymous caller. Only `none` and
`user_or_none` routes without a permission take anonymous callers.

A bearer caller's own token is forwarded only to the API it was issued for, and never when
it is DPoP-bound (the proof that goes with it is for us, not for the upstream).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from app.auth.tokens import Principal
from app.core.errors import (
    Forbidden,
    GatewayTimeout,
    PayloadTooLarge,
    UpstreamError,
)
from app.core.metrics import REMOTE_LATENCY
from app.core.settings.remote import RemoteRoute
from app.remote import http11, lifecycle
from app.remote.pool import Held, Origin, UpstreamPool
from app.remote.runtime import RemoteRuntime
from app.session.cache import Session
from app.session.dpop import SessionKey

logger = logging.getLogger(__name__)

Mode = Literal["anonymous", "bearer", "cookie"]
Attached = Literal["none", "user", "client"]
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling a remote route, and with what."""

    mode: Mode
    principal: Principal | None = None
    bearer: str | None = None  # the caller's own token (bearer mode), a secret
    session: Session | None = None  # cookie mode


@dataclass(frozen=True, slots=True)
class Credential:
    """What a forwarded call carries: nothing, or a token (a secret) of a kind; a
    DPoP-bound session token goes with a proof signed by the session's `key`."""

    kind: Attached
    token: str | None = None
    audience: str | None = None
    key: SessionKey | None = None
    renewable: bool = False  # another token can be got if the upstream refuses this one


NONE = Credential("none")


async def credential(
    runtime: RemoteRuntime, route: RemoteRoute, caller: Caller, *, refused: str | None = None
) -> Credential:
    """The token the route's rule attaches for this caller (or a 403 `Forbidden`); not
    `refused`, a token the upstream has just answered 401 to."""
    rule = route.token
    if rule == "none" or (rule == "user_or_none" and caller.mode == "anonymous"):
        return NONE
    audience = runtime.audience_of(route)
    if rule == "client":
        return await _client(runtime, route, audience, refused)
    if caller.mode == "cookie" and caller.session is not None:
        return await _session_token(runtime, route, caller.session, audience, refused)
    if caller.mode == "bearer" and caller.principal is not None and caller.bearer is not None:
        own = audience == runtime.own_audience and caller.principal.jkt is None
        if own:
            return Credential("user", caller.bearer, audience)
        if rule == "user_or_client":
            return await _client(runtime, route, audience, refused)
        raise Forbidden(
            "a bearer token is forwarded only to the API it was issued for (and never when "
            "DPoP-bound); call this route with the session cookie"
        )
    raise Forbidden("this remote API needs a signed-in user")


async def _client(
    runtime: RemoteRuntime, route: RemoteRoute, audience: str, refused: str | None
) -> Credential:
    if refused is not None:
        runtime.clients.drop(audience, route.scopes, refused)
    token = await runtime.clients.get(audience, route.scopes)
    return Credential("client", token, audience, renewable=True)


async def _session_token(
    runtime: RemoteRuntime,
    route: RemoteRoute,
    session: Session,
    audience: str,
    refused: str | None,
) -> Credential:
    tokens = runtime.audiences
    if tokens is None:  # a session exists only in cookie mode, with its runtime
        raise Forbidden("cookie sessions are off")
    key = lifecycle.session_key(tokens.sessions, session)
    if audience == runtime.own_audience:
        return Credential("user", session.access_token, audience, key)
    got = await lifecycle.token_for(tokens, session, audience, route.scopes, refused=refused)
    return Credential("user", got.token, audience, key, renewable=True)


@dataclass
class Answer:
    """The upstream's status line and headers, its body still to be read (`chunks`) and
    the connection to be given back (`close`)."""

    status: int
    headers: list[tuple[str, str]]
    _held: Held
    _pool: UpstreamPool

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; `UpstreamBroke` when the upstream breaks off."""
        try:
            async for chunk in self._held.chunks():
                yield chunk
        except http11.HTTPError as exc:
            raise UpstreamBroke(type(exc).__name__) from None

    async def close(self) -> None:
        self._pool.release(self._held)


class UpstreamBroke(Exception):
    """The upstream's answer broke off after its headers (the reason is an exception's name)."""


async def send(
    runtime: RemoteRuntime,
    route: RemoteRoute,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    body: AsyncIterator[bytes] | None,
    credential: Credential,
) -> Answer:
    """Send the call and return the upstream's answer with its body still unread (the
    caller streams and closes it). 504 on a timeout, 502 when the upstream cannot be
    reached or answered nothing usable; a redirect is an answer like any other.

    Sent on the pool's own HTTP/1.1 connections (app/remote/pool.py, app/remote/http11.py):
    a proxy needs none of what httpx adds (redirects, cookies, decoding), nor its pool's
    look at every connection it holds on each call."""
    where = _origin_of(url)
    sent = [(b"Host", where.host_header)]
    sent += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    if credential.token is not None and credential.key is not None:
        proof = credential.key.proof(method, url, access_token=credential.token)
        sent += [(b"Authorization", f"DPoP {credential.token}".encode()), (b"DPoP", proof.encode())]
    elif credential.token is not None:
        sent.append((b"Authorization", f"Bearer {credential.token}".encode()))
    if body is not None and not any(name.lower() == b"content-length" for name, _ in sent):
        sent.append((b"Transfer-Encoding", b"chunked"))
    seconds = route.timeout_seconds
    timeouts = http11.Timeouts(connect=min(seconds, 5.0), read=seconds, write=seconds, pool=seconds)
    target = url[where.length :].encode("ascii") or b"/"
    request = http11.Request(method.encode("ascii"), target, sent, body)
    started = time.perf_counter()
    try:
        held = await runtime.http.send(where.origin, request, timeouts)
    except http11.TimedOut:
        logger.warning("a remote API did not answer in time", extra={"route": route.name})
        raise GatewayTimeout(f"the remote API {route.name} did not answer in time") from None
    except http11.HTTPError as exc:
        logger.warning(
            "a remote API could not be reached",
            extra={"route": route.name, "error": type(exc).__name__, "reason": str(exc)},
        )
        raise UpstreamError(f"the remote API {route.name} could not be reached") from None
    REMOTE_LATENCY.labels(route=route.name).observe(time.perf_counter() - started)
    head = held.head
    answered = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers]
    return Answer(head.status, answered, held, runtime.http)


@dataclass(frozen=True, slots=True)
class _Origin:
    origin: Origin  # scheme, host, port: the pool's key
    host_header: bytes
    length: int  # of `scheme://netloc`, where the request target starts


@functools.lru_cache(maxsize=256)
def _origin_of_base(scheme: str, netloc: str) -> _Origin:
    parts = urlsplit(f"{scheme}://{netloc}")
    port = parts.port or (443 if scheme == "https" else 80)
    return _Origin(
        (scheme, parts.hostname or "", port),
        netloc.encode("ascii"),
        len(scheme) + 3 + len(netloc),
    )


def _origin_of(url: str) -> _Origin:
    """The scheme, host and port of an upstream URL, worked out once per upstream."""
    scheme, _, rest = url.partition("://")
    return _origin_of_base(scheme, rest.split("/", 1)[0].split("?", 1)[0])


def capped(chunks: AsyncIterator[bytes], limit: int, counted: list[int]) -> AsyncIterator[bytes]:
    """`chunks`, counted into `counted[0]`, refused with a 413 once past `limit` bytes."""

    async def relay() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            counted[0] += len(chunk)
            if counted[0] > limit:
                raise PayloadTooLarge(f"the body exceeds this remote API's limit of {limit} bytes")
            if chunk:
                yield chunk

    return relay()
