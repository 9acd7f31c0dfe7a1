"""The upstreams' connection pool against a real server on loopback: a connection is kept
for the next call to the same upstream, one the upstream closes is not, and calls past the
limit wait for a free one, then time out (a 504 to the caller)."""

from __future__ import annotations

import httpcore
import pytest

from app.remote.pool import UpstreamPool
from devkit.upstream import Upstream


def _get(url: str, *, headers: list[tuple[bytes, bytes]] | None = None) -> httpcore.Request:
    host = url.removeprefix("http://").split("/", 1)[0].encode()
    timeout = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 0.2}
    return httpcore.Request(
        "GET", url, headers=[(b"Host", host), *(headers or [])], extensions={"timeout": timeout}
    )


async def test_a_connection_is_kept_for_the_next_call(upstream: Upstream) -> None:
    pool = UpstreamPool()
    try:
        first = await pool.send(_get(f"{upstream.url}/status/204"))
        assert first.response.status == 204
        await first.response.aread()  # read to its end: the connection is free again
        await pool.release(first)
        second = await pool.send(_get(f"{upstream.url}/status/204"))
        assert second.response.status == 204
        assert second.connection is first.connection
        await pool.release(second)
    finally:
        await pool.aclose()
    assert len(upstream.seen) == 2


async def test_a_connection_the_upstream_closes_is_not_reused(upstream: Upstream) -> None:
    pool = UpstreamPool()
    try:
        closing = await pool.send(
            _get(f"{upstream.url}/status/204", headers=[(b"Connection", b"close")])
        )
        await closing.response.aread()
        await pool.release(closing)
        again = await pool.send(_get(f"{upstream.url}/status/200"))
        assert again.response.status == 200
        assert again.connection is not closing.connection
        await pool.release(again)
    finally:
        await pool.aclose()


async def test_a_call_past_the_limit_waits_then_times_out(upstream: Upstream) -> None:
    pool = UpstreamPool(max_connections=1)
    try:
        held = await pool.send(_get(f"{upstream.url}/status/200"))
        with pytest.raises(httpcore.PoolTimeout):
            await pool.send(_get(f"{upstream.url}/status/200"))
        await pool.release(held)
        await pool.release(held)  # given back once only, however often released
        after = await pool.send(_get(f"{upstream.url}/status/204"))
        assert after.response.status == 204
        with pytest.raises(httpcore.PoolTimeout):  # still one slot, not two
            await pool.send(_get(f"{upstream.url}/status/200"))
        await pool.release(after)
    finally:
        await pool.aclose()
    assert len(upstream.seen) == 2  # the calls that timed out waiting never left
