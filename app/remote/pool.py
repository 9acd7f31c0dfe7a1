"""The upstreams' keep-alive connections (app/remote/http11.py): one per call in flight,
taken from and given back to the idle ones of its origin (the latest first).

Only the connection taken is looked at: one the upstream closed while idle has been seen
closed by the event loop and is passed over, as is one idle past `keepalive_expiry`; one
found closed as the request goes out (`Stale`: nothing of it written) is replaced by a new
connection, once. At most `max_connections` calls are in flight (a call past it waits up to
its `pool` timeout, then `TimedOut`), at most `max_idle` connections are kept per origin.
It follows no redirect and reads no proxy setting from the environment; https upstreams
are verified against the system's certificate authorities.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.remote import http11
from app.remote.http11 import Connection, Head, Request, Timeouts

Origin = tuple[str, str, int]  # scheme, host, port


@dataclass(slots=True)
class Held:
    """An answer's head, its body still unread, and the connection it holds until
    `release`."""

    head: Head
    connection: Connection
    origin: Origin
    read_timeout: float
    released: bool = False

    def chunks(self) -> AsyncIterator[bytes]:
        return self.connection.chunks(self.read_timeout)


class UpstreamPool:
    def __init__(
        self,
        *,
        max_connections: int = 100,
        max_idle: int = 20,
        keepalive_expiry: float = 30.0,
        tls: ssl.SSLContext | None = None,  # default: the system's authorities, host checked
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[Origin, list[Connection]] = {}
        self._open: set[Connection] = set()
        self._tls = tls

    async def send(self, origin: Origin, request: Request, timeouts: Timeouts) -> Held:
        """The upstream's answer with its body unread: `release` it once read or given up."""
        if self._slots.locked():
            try:
                async with asyncio.timeout(timeouts.pool):
                    await self._slots.acquire()
            except TimeoutError:
                raise http11.TimedOut("no connection free in time") from None
        else:
            await self._slots.acquire()
        connection = self._take(origin)
        try:
            if connection is not None:
                try:
                    head = await connection.send(request, timeouts)
                except http11.Stale:
                    self._drop(connection)
                    connection = None
                else:
                    return Held(head, connection, origin, timeouts.read)
            connection = await self._connect(origin, timeouts.connect)
            head = await connection.send(request, timeouts)
            return Held(head, connection, origin, timeouts.read)
        except BaseException:
            self._slots.release()
            if connection is not None:
                self._drop(connection)
            raise

    def release(self, held: Held) -> None:
        """Read or not, the answer is over: its connection is kept for the next call when
        it can be, else closed."""
        if held.released:
            return
        held.released = True
        try:
            connection = held.connection
            idle = self._idle.setdefault(held.origin, [])
            if connection.reusable() and len(idle) < self._max_idle:
                connection.recycle(asyncio.get_running_loop().time())
                idle.append(connection)  # before the slot is free: the next call takes it
            else:
                self._drop(connection)
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        self._idle.clear()
        for connection in list(self._open):
            self._drop(connection)

    def _take(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if connection.usable(now, self._keepalive_expiry):
                return connection
            self._drop(connection)  # the upstream closed it, or it is too old
        return None

    async def _connect(self, origin: Origin, seconds: float) -> Connection:
        scheme, host, port = origin
        tls = self._tls_context() if scheme == "https" else None
        connection = await http11.connect(host, port, tls=tls, seconds=seconds)
        self._open.add(connection)
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()  # verifies the chain and the host name
            self._tls.set_alpn_protocols(["http/1.1"])
        return self._tls

    def _drop(self, connection: Connection) -> None:
        self._open.discard(connection)
        connection.close()
