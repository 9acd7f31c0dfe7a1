"""One HTTP/1.1 connection to an upstream (app/remote/http11.py), against real servers on
loopback: the stand-in upstream under uvicorn, and a scripted one for what a well-behaved
server never sends."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import orjson
import pytest

from app.remote import http11
from app.remote.http11 import Connection
from devkit.upstream import Upstream
from tests.remote.scripted import scripted_upstream

TIMEOUTS = http11.Timeouts(connect=5.0, read=5.0, write=5.0, pool=5.0)


async def _connect(url: str) -> Connection:
    port = int(url.rsplit(":", 1)[1])
    return await http11.connect("127.0.0.1", port, tls=None, seconds=5.0)


def _request(
    url: str, target: str, method: bytes = b"GET", body: AsyncIterator[bytes] | None = None
) -> http11.Request:
    host = (b"Host", url.removeprefix("http://").encode())
    return http11.Request(method, target.encode(), [host], body)


async def _body(connection: Connection, read_timeout: float = 5.0) -> bytes:
    return b"".join([chunk async for chunk in connection.chunks(read_timeout)])


async def _exchange(connection: Connection, url: str) -> bytes:
    await connection.send(_request(url, "/"), TIMEOUTS)
    return await _body(connection)


def _headers(head: http11.Head) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in head.headers}


async def test_a_body_of_declared_length(upstream: Upstream) -> None:
    connection = await _connect(upstream.url)
    try:
        head = await connection.send(_request(upstream.url, "/bytes/3000?sized=1"), TIMEOUTS)
        assert head.status == 200
        assert _headers(head)[b"content-length"] == b"3000"
        assert await _body(connection) == b"x" * 3000
        assert connection.reusable()
    finally:
        connection.close()


async def test_a_chunked_body(upstream: Upstream) -> None:
    connection = await _connect(upstream.url)
    try:
        head = await connection.send(_request(upstream.url, "/bytes/200000"), TIMEOUTS)
        assert _headers(head)[b"transfer-encoding"] == b"chunked"
        assert await _body(connection) == b"x" * 200000
        assert connection.reusable()
    finally:
        connection.close()


async def test_one_connection_carries_call_after_call(upstream: Upstream) -> None:
    connection = await _connect(upstream.url)
    try:
        for target in ("/bytes/10", "/status/204", "/bytes/70000", "/bytes/5?sized=1"):
            await connection.send(_request(upstream.url, target), TIMEOUTS)
            await _body(connection)
            assert connection.reusable()
            connection.recycle(0.0)
        head = await connection.send(_request(upstream.url, "/echo/x", b"HEAD"), TIMEOUTS)
        assert int(_headers(head)[b"content-length"]) > 0  # what a GET would have had
        assert await _body(connection) == b""  # and no body after it
        connection.recycle(0.0)
        head = await connection.send(_request(upstream.url, "/bytes/7?sized=1"), TIMEOUTS)
        assert await _body(connection) == b"x" * 7
    finally:
        connection.close()
    assert len(upstream.seen) == 6


async def test_a_request_body_streams_chunked(upstream: Upstream) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"ab", b"", b"cde" * 1000):
            yield part

    connection = await _connect(upstream.url)
    try:
        request = _request(upstream.url, "/echo/x", b"POST", parts())
        request.headers.append((b"Transfer-Encoding", b"chunked"))
        head = await connection.send(request, TIMEOUTS)
        assert head.status == 200
        assert orjson.loads(await _body(connection))["body_bytes"] == 3002
    finally:
        connection.close()


async def test_header_case_and_repeats_are_kept() -> None:
    answer = b"HTTP/1.1 200 OK\r\nX-Dup: a\r\nX-MiXed: c\r\nx-dup: b\r\nContent-Length: 0\r\n\r\n"
    async with scripted_upstream([answer]) as served:
        connection = await _connect(served.url)
        try:
            head = await connection.send(_request(served.url, "/"), TIMEOUTS)
        finally:
            connection.close()
    assert head.headers == [
        (b"X-Dup", b"a"),
        (b"X-MiXed", b"c"),
        (b"x-dup", b"b"),
        (b"Content-Length", b"0"),
    ]


async def test_the_upstream_closing_the_idle_connection_is_seen() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with scripted_upstream([answer], close_after=True) as served:
        connection = await _connect(served.url)
        try:
            await connection.send(_request(served.url, "/"), TIMEOUTS)
            assert await _body(connection) == b"ok"
            connection.recycle(0.0)
            await asyncio.sleep(0.1)
            assert not connection.usable(0.0, 30.0)
            with pytest.raises(http11.Stale):  # refused before anything is written
                await connection.send(_request(served.url, "/again"), TIMEOUTS)
        finally:
            connection.close()
        assert served.requests == [b"/"]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 2000 Very OK\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_a_malformed_answer_is_broken(answer: bytes) -> None:
    async with scripted_upstream([answer]) as served:
        connection = await _connect(served.url)
        try:
            with pytest.raises(http11.Broken):
                await _exchange(connection, served.url)
            assert not connection.reusable()
        finally:
            connection.close()


async def test_a_body_cut_short_is_broken_and_one_until_the_close_is_whole() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
    async with scripted_upstream([cut], close_after=True) as served:
        connection = await _connect(served.url)
        await connection.send(_request(served.url, "/"), TIMEOUTS)
        with pytest.raises(http11.Broken):
            await _body(connection)
        connection.close()
    unframed = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    async with scripted_upstream([unframed], close_after=True) as served:
        connection = await _connect(served.url)
        await connection.send(_request(served.url, "/"), TIMEOUTS)
        assert await _body(connection) == b"all of it"
        assert not connection.reusable()
        connection.close()


async def test_a_slow_answer_times_out(upstream: Upstream) -> None:
    connection = await _connect(upstream.url)
    try:
        quick = http11.Timeouts(connect=5.0, read=0.2, write=5.0, pool=5.0)
        with pytest.raises(http11.TimedOut):
            await connection.send(_request(upstream.url, "/slow/2000"), quick)
        assert not connection.reusable()
    finally:
        connection.close()


async def test_a_body_that_stops_coming_times_out() -> None:
    stalled = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
    async with scripted_upstream([stalled]) as served:
        connection = await _connect(served.url)
        try:
            await connection.send(_request(served.url, "/"), TIMEOUTS)
            with pytest.raises(http11.TimedOut):
                await _body(connection, read_timeout=0.2)
        finally:
            connection.close()


async def test_an_unread_answer_is_not_held_in_memory(upstream: Upstream) -> None:
    size = 10 * 1024 * 1024
    connection = await _connect(upstream.url)
    try:
        tracemalloc.start()
        try:
            await connection.send(_request(upstream.url, f"/bytes/{size}"), TIMEOUTS)
            await asyncio.sleep(0.5)  # nobody reads: the socket is no longer read either
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2 * 1024 * 1024, f"{peak} bytes held"
        assert len(await _body(connection)) == size  # and all of it comes once read
    finally:
        connection.close()
