"""One HTTP/1.1 connection to an upstream: an asyncio `Protocol` whose answers are parsed by
httptools (llhttp, the C parser uvicorn serves with), one exchange at a time.

A forwarded call needs only this (httpcore's h11 and anyio streams took a quarter of its
CPU): the request written as it comes, the answer's status and headers (case and repeats
kept), its body as it arrives, queued; past `HIGH_WATER` bytes queued the socket is not
read until the reader drains them below `LOW_WATER`. A connection is reusable once its
answer is over and both sides meant to keep it open; one the upstream closed is seen
closed by the event loop, and `send` refuses it (`Stale`) before writing anything.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httptools

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class HTTPError(Exception):
    """An exchange failed; the message says how, never a header's value or a body."""


class TimedOut(HTTPError):
    """No connection, no answer or no room to write within the time given."""


class Broken(HTTPError):
    """The connection failed or closed early, or the answer was malformed."""


class Stale(Broken):
    """Found closed before anything was written: the request can go out on another."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    read: float  # for the answer's head, and for each piece of its body
    write: float
    pool: float  # for a connection slot (app/remote/pool.py)


@dataclass(frozen=True, slots=True)
class Request:
    method: bytes
    target: bytes  # the path and query, as sent
    headers: list[tuple[bytes, bytes]]  # Host first; Content-Length or chunked set for a body
    body: AsyncIterator[bytes] | None = None


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    headers: list[tuple[bytes, bytes]]


async def connect(
    host: str, port: int, *, tls: ssl.SSLContext | None, seconds: float
) -> Connection:
    """A new connection; with `tls`, verified for `host` as the context says."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(seconds):
            _, connection = await loop.create_connection(
                Connection, host, port, ssl=tls, server_hostname=host if tls else None
            )
    except TimeoutError:
        raise TimedOut("connecting took too long") from None
    except OSError as exc:  # refused, unreachable, no such host, a certificate refused
        raise Broken(f"could not connect ({type(exc).__name__})") from None
    return connection


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head: Head | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._head_only = False  # a HEAD request's answer ends with its head
        self._interim = False  # a 1xx answer before the real one
        self._until_eof = False  # no length, not chunked: the body ends when the socket does
        self._keep_alive = False
        self._error: HTTPError | None = None
        self._closed = False
        self._reading_paused = False
        self._writing_paused = False
        self.idle_since = 0.0

    async def send(self, request: Request, timeouts: Timeouts) -> Head:
        """Write the request and return the answer's head; its body is `chunks()`."""
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            raise Stale("the upstream closed the idle connection")
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = request.method == b"HEAD"
        lines = [b"%s %s HTTP/1.1" % (request.method, request.target)]
        lines += [name + b": " + value for name, value in request.headers]
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        breaks = len(lines) + 1
        if head.count(b"\n") != breaks or head.count(b"\r") != breaks or b"\0" in head:
            raise Broken("a header holds a line break or a NUL")
        transport.write(head)
        if request.body is not None:
            await self._write_body(request, timeouts.write)
        elif self._writing_paused:
            await self._wait(timeouts.write, "writing the request took too long")
        while self._head is None:
            self._check()
            await self._wait(timeouts.read, "no answer in time")
        return self._head

    async def chunks(self, read_timeout: float) -> AsyncIterator[bytes]:
        """The answer's body as it arrives; `TimedOut` past `read_timeout` between pieces,
        `Broken` when the upstream breaks off."""
        body = self._body
        while True:
            if body:
                chunk = body.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered <= LOW_WATER:
                    self._reading_paused = False
                    if self._transport is not None and not self._closed:
                        self._transport.resume_reading()
                yield chunk
            elif self._complete:
                return
            else:
                self._check()
                await self._wait(read_timeout, "the answer stopped coming")

    def reusable(self) -> bool:
        """The answer is over and both sides meant to keep the connection open."""
        return self._complete and self._keep_alive and self._error is None and not self._closed

    def recycle(self, now: float) -> None:
        """Ready for the next exchange (`reusable()` said so), idle from `now`."""
        self._parser = None
        self._head = None
        self._body.clear()
        self._buffered = 0
        self._complete = False
        self.idle_since = now
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def usable(self, now: float, keepalive_expiry: float) -> bool:
        """An idle connection still open and not kept past `keepalive_expiry`."""
        return not self._closed and now - self.idle_since <= keepalive_expiry

    def close(self) -> None:
        between = self._parser is None or self.reusable()
        self._closed = True
        if self._transport is not None:  # mid-exchange, nothing more of it is wanted: abort
            (self._transport.close if between else self._transport.abort)()

    async def _write_body(self, request: Request, seconds: float) -> None:
        assert self._transport is not None and request.body is not None
        declared = next((v for k, v in request.headers if k.lower() == b"content-length"), None)
        written = 0
        async for chunk in request.body:
            if not chunk:
                continue
            self._check()
            written += len(chunk)
            if declared is None:
                self._transport.writelines([b"%x\r\n" % len(chunk), chunk, b"\r\n"])
            else:
                self._transport.write(chunk)
            if self._writing_paused:
                await self._wait(seconds, "writing the request took too long")
        if declared is None:
            self._transport.write(b"0\r\n\r\n")
        elif written != int(declared):
            self._keep_alive = False
            raise Broken("the body sent differs from its Content-Length")

    async def _wait(self, seconds: float, late: str) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError:
            self._keep_alive = False
            raise TimedOut(late) from None
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise Broken("the upstream closed the connection")

    def _fail(self, error: HTTPError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    # asyncio's calls.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self._complete:
            self._fail(Broken("the upstream sent bytes nobody asked for"))
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(Broken(f"a malformed answer ({type(exc).__name__})"))
            self.close()

    def eof_received(self) -> bool | None:
        self._ended()
        return None  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()
        self._writing_paused = False

    def _ended(self) -> None:
        self._closed = True
        if self._parser is not None and not self._complete:
            if self._head is not None and self._until_eof:
                self._complete = True  # that was the body's end
            else:
                self._fail(Broken("the upstream closed the connection mid-answer"))
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    # httptools' calls, from within `feed_data`.

    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True
            return
        framed = status in (204, 304) or any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self._headers
        )
        self._until_eof = not framed
        self._keep_alive = self._parser.should_keep_alive()
        self._head = Head(status, self._headers)
        if self._head_only:
            self._complete = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._head_only:
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
        self._wake()
