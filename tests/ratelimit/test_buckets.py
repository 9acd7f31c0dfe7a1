"""The account flows' limits, checked in Postgres on the request path
(app/ratelimit/buckets.py): unit tests on a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from app.core.db import asyncpg_dsn
from app.core.errors import TooManyRequests
from app.core.settings import Settings
from app.ratelimit.buckets import Rate, RateLimiter


@pytest.fixture
async def app_conn(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(settings.database.url))
    yield conn
    await conn.close()


class TestRateLimiter:
    async def test_burst_then_refused_with_retry_after(self, app_conn: asyncpg.Connection) -> None:
        limiter = RateLimiter()
        rate = Rate(3, 60)
        for _ in range(3):
            await limiter.take(app_conn, [("b", rate)])
        with pytest.raises(TooManyRequests) as refused:
            await limiter.take(app_conn, [("b", rate)])
        assert 19 <= int(refused.value.headers["Retry-After"]) <= 20  # one refill: 60 s / 3

    async def test_refills_over_time(self, app_conn: asyncpg.Connection) -> None:
        limiter, rate = RateLimiter(), Rate(2, 0.6)
        await limiter.take(app_conn, [("b", rate)])
        await limiter.take(app_conn, [("b", rate)])
        with pytest.raises(TooManyRequests):
            await limiter.take(app_conn, [("b", rate)])
        await asyncio.sleep(0.35)  # one hit refilled (0.3 s each)
        await limiter.take(app_conn, [("b", rate)])

    async def test_refused_hit_does_not_consume(self, app_conn: asyncpg.Connection) -> None:
        limiter, rate = RateLimiter(), Rate(1, 0.4)
        await limiter.take(app_conn, [("b", rate)])
        for _ in range(5):
            with pytest.raises(TooManyRequests):
                await limiter.take(app_conn, [("b", rate)])
        await asyncio.sleep(0.45)
        await limiter.take(app_conn, [("b", rate)])  # the refusals did not push it back

    async def test_any_bucket_refuses(self, app_conn: asyncpg.Connection) -> None:
        limiter = RateLimiter()
        await limiter.take(app_conn, [("tight", Rate(1, 60))])
        with pytest.raises(TooManyRequests):
            await limiter.take(app_conn, [("loose", Rate(100, 60)), ("tight", Rate(1, 60))])

    async def test_purge_drops_full_buckets_only(
        self, app_conn: asyncpg.Connection, owner: asyncpg.Connection
    ) -> None:
        limiter = RateLimiter()
        await limiter.take(app_conn, [("short", Rate(1, 0.05)), ("long", Rate(1, 600))])
        await asyncio.sleep(0.1)
        await RateLimiter.purge(app_conn)
        assert [r["bucket"] for r in await owner.fetch("SELECT bucket FROM rate_limits")] == [
            "long"
        ]

    def test_rate_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="count"):
            Rate(0, 60)
