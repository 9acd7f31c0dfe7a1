"""The upstreams' connection pool against a real server on loopback: a connection is kept
for the next call to the same upstream, one the upstream closes is not, and calls past the
limit wait for a free one, then time out (a 504 to the caller)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from app.remote import http11
from app.remote.pool import Held, Origin, UpstreamPool
from devkit.upstream import Upstream
from tests.remote.scripted import scripted_upstream, self_signed

TIMEOUTS = http11.Timeouts(connect=5.0, read=5.0, write=5.0, pool=0.2)


def _origin(url: str) -> Origin:
    host, _, port = url.removeprefix("http://").partition(":")
    return ("http", host, int(port))


def _get(
    url: str, path: str, *, headers: list[tuple[bytes, bytes]] | None = None
) -> http11.Request:
    host = url.removeprefix("http://").encode()
    return http11.Request(b"GET", path.encode(), [(b"Host", host), *(headers or [])])


async def _read(held: Held) -> bytes:
    return b"".join([chunk async for chunk in held.chunks()])


async def test_a_connection_is_kept_for_the_next_call(upstream: Upstream) -> None:
    pool = UpstreamPool()
    origin = _origin(upstream.url)
    try:
        first = await pool.send(origin, _get(upstream.url, "/status/204"), TIMEOUTS)
        assert first.head.status == 204
        await _read(first)  # read to its end: the connection is free again
        pool.release(first)
        second = await pool.send(origin, _get(upstream.url, "/status/204"), TIMEOUTS)
        assert second.head.status == 204
        assert second.connection is first.connection
        pool.release(second)
    finally:
        await pool.aclose()
    assert len(upstream.seen) == 2


async def test_the_latest_idle_connection_is_taken_and_at_most_max_idle_kept(
    upstream: Upstream,
) -> None:
    pool = UpstreamPool(max_idle=2)
    origin = _origin(upstream.url)
    try:
        held = [
            await pool.send(origin, _get(upstream.url, "/status/204"), TIMEOUTS) for _ in range(3)
        ]
        for each in held:
            pool.release(each)  # the third finds two idle already: it is closed
        again = await pool.send(origin, _get(upstream.url, "/status/204"), TIMEOUTS)
        assert again.connection is held[1].connection  # the latest kept
        pool.release(again)
        assert not held[2].connection.usable(0.0, 30.0)
    finally:
        await pool.aclose()


async def test_an_unread_answer_does_not_leave_its_connection_for_the_next(
    upstream: Upstream,
) -> None:
    pool = UpstreamPool()
    origin = _origin(upstream.url)
    try:
        big = await pool.send(origin, _get(upstream.url, "/bytes/2000000"), TIMEOUTS)
        pool.release(big)  # given up half way: the rest of it must not meet the next call
        after = await pool.send(origin, _get(upstream.url, "/bytes/10"), TIMEOUTS)
        assert after.connection is not big.connection
        assert await _read(after) == b"x" * 10
        pool.release(after)
    finally:
        await pool.aclose()


async def test_a_connection_the_upstream_closes_is_not_reused(upstream: Upstream) -> None:
    pool = UpstreamPool()
    origin = _origin(upstream.url)
    try:
        closing = await pool.send(
            origin,
            _get(upstream.url, "/status/204", headers=[(b"Connection", b"close")]),
            TIMEOUTS,
        )
        await _read(closing)
        pool.release(closing)
        again = await pool.send(origin, _get(upstream.url, "/status/200"), TIMEOUTS)
        assert again.head.status == 200
        assert again.connection is not closing.connection
        pool.release(again)
    finally:
        await pool.aclose()


async def test_an_idle_connection_the_upstream_closed_later_is_replaced() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with scripted_upstream([answer], close_after=True) as served:
        pool = UpstreamPool()
        origin = ("http", "127.0.0.1", served.port)
        try:
            first = await pool.send(origin, _get(served.url, "/a"), TIMEOUTS)
            assert await _read(first) == b"ok"
            pool.release(first)  # kept: the answer said nothing of closing
            await asyncio.sleep(0.1)  # the upstream closes it meanwhile
            second = await pool.send(origin, _get(served.url, "/b"), TIMEOUTS)
            assert await _read(second) == b"ok"
            assert second.connection is not first.connection
            pool.release(second)
        finally:
            await pool.aclose()
        assert served.connections == 2
        assert served.requests == [b"/a", b"/b"]  # each sent once: nothing retried twice


async def test_a_call_past_the_limit_waits_then_times_out(upstream: Upstream) -> None:
    pool = UpstreamPool(max_connections=1)
    origin = _origin(upstream.url)
    try:
        held = await pool.send(origin, _get(upstream.url, "/status/200"), TIMEOUTS)
        with pytest.raises(http11.TimedOut):
            await pool.send(origin, _get(upstream.url, "/status/200"), TIMEOUTS)
        pool.release(held)
        pool.release(held)  # given back once only, however often released
        after = await pool.send(origin, _get(upstream.url, "/status/204"), TIMEOUTS)
        assert after.head.status == 204
        with pytest.raises(http11.TimedOut):  # still one slot, not two
            await pool.send(origin, _get(upstream.url, "/status/200"), TIMEOUTS)
        pool.release(after)
    finally:
        await pool.aclose()
    assert len(upstream.seen) == 2  # the calls that timed out waiting never left


async def test_a_failed_call_gives_its_slot_back() -> None:
    pool = UpstreamPool(max_connections=1)
    nowhere = ("http", "127.0.0.1", 9)
    for _ in range(2):  # the second would wait for the slot if the first had kept it
        with pytest.raises(http11.Broken):
            await pool.send(nowhere, _get("http://127.0.0.1:9", "/"), TIMEOUTS)
    await pool.aclose()


async def test_an_https_upstream_is_verified(tmp_path: Path) -> None:
    server, cert = self_signed(tmp_path)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with scripted_upstream([answer], tls=server) as served:
        origin = ("https", "localhost", served.port)
        request = _get(f"https://localhost:{served.port}", "/")
        default = UpstreamPool()  # the system's authorities: a self-signed certificate fails
        with pytest.raises(http11.Broken, match="SSLCertVerificationError"):
            await default.send(origin, request, TIMEOUTS)
        await default.aclose()
        assert served.requests == []
        trusting = UpstreamPool(tls=ssl.create_default_context(cafile=cert))
        try:
            for _ in range(2):
                held = await trusting.send(origin, request, TIMEOUTS)
                assert await _read(held) == b"ok"
                trusting.release(held)
        finally:
            await trusting.aclose()
        assert served.connections == 1  # kept open between the calls, as over plain TCP
        wrong_name = ("https", "127.0.0.1", served.port)  # not a name the certificate holds
        trusting = UpstreamPool(tls=ssl.create_default_context(cafile=cert))
        with pytest.raises(http11.Broken, match="SSLCertVerificationError"):
            await trusting.send(wrong_name, request, TIMEOUTS)
        await trusting.aclose()
