"""The upstreams' keep-alive connections: one httpcore HTTP/1.1 connection per call in
flight, taken from and given back to the idle ones of its origin (the latest first).

httpcore's own pool looks at every connection it holds on each request and on each answer
closed (a poll of each idle socket), which was most of a forwarded call's CPU; this one
looks only at the connection it takes. At most `max_connections` calls are in flight (a
call past it waits up to its `pool` timeout, then `httpcore.PoolTimeout`), at most
`max_idle` connections are kept per origin, each for `keepalive_expiry` seconds. It follows
no redirect and reads no proxy setting from the environment.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpcore

Origin = tuple[bytes, bytes, int]


@dataclass(slots=True)
class Held:
    """An answer, its body still unread, and the connection it holds until `release`."""

    response: httpcore.Response
    connection: httpcore.AsyncHTTPConnection
    origin: Origin
    released: bool = False


class UpstreamPool:
    def __init__(
        self, *, max_connections: int = 100, max_idle: int = 20, keepalive_expiry: float = 30.0
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[Origin, list[httpcore.AsyncHTTPConnection]] = {}
        self._open: set[httpcore.AsyncHTTPConnection] = set()

    async def send(self, request: httpcore.Request) -> Held:
        """The upstream's answer with its body unread: `release` it once read or given up."""
        wait = request.extensions.get("timeout", {}).get("pool")
        try:
            await asyncio.wait_for(self._slots.acquire(), wait)
        except TimeoutError:
            raise httpcore.PoolTimeout("no connection free in time") from None
        where = request.url.origin
        origin = (where.scheme, where.host, where.port)
        try:
            connection = await self._take(origin, where)
        except BaseException:
            self._slots.release()
            raise
        try:
            response = await connection.handle_async_request(request)
        except BaseException:
            self._slots.release()
            await self._drop(connection)
            raise
        return Held(response, connection, origin)

    async def release(self, held: Held) -> None:
        """Read or not, the answer is over: its connection is kept for the next call when
        it can be, else closed."""
        if held.released:
            return
        held.released = True
        try:
            await held.response.aclose()
        finally:
            try:
                idle = self._idle.setdefault(held.origin, [])
                if held.connection.is_idle() and len(idle) < self._max_idle:
                    idle.append(held.connection)  # before the slot is free: the next takes it
                else:
                    await self._drop(held.connection)
            finally:
                self._slots.release()

    async def aclose(self) -> None:
        self._idle.clear()
        for connection in list(self._open):
            await self._drop(connection)

    async def _take(
        self, origin: Origin, url_origin: httpcore.Origin
    ) -> httpcore.AsyncHTTPConnection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.has_expired():
                return connection
            await self._drop(connection)  # the server closed it, or it is too old
        connection = httpcore.AsyncHTTPConnection(
            url_origin, keepalive_expiry=self._keepalive_expiry
        )
        self._open.add(connection)
        return connection

    async def _drop(self, connection: httpcore.AsyncHTTPConnection) -> None:
        self._open.discard(connection)
        await connection.aclose()
