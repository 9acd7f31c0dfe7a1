"""Counts shared across copies through the stores (app/ratelimit/stores.py): Postgres, and Redis
when a server answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from app.core.db import asyncpg_dsn, create_database
from app.ratelimit import GlobalRateLimiter, Quota, RedisCounters
from devkit.db import ProvisionedDatabase
from tests.fixtures.redis import import_redis
from tests.ratelimit.support import NEVER, WINDOW, FakeClock, admitted, window_start


@contextlib.asynccontextmanager
async def app_pool(database: ProvisionedDatabase) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(asyncpg_dsn(database.app_url), min_size=0, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def stored_total(owner: asyncpg.Connection, key: str) -> int:
    total: int = await owner.fetchval(
        "SELECT coalesce(sum(count), 0) FROM rate_counters WHERE key = $1", key
    )
    return total


# --- Shared through Postgres ---------------------------------------------------------------


class TestPostgres:
    async def test_two_copies_share_one_budget(
        self, database: ProvisionedDatabase, owner: asyncpg.Connection
    ) -> None:
        clock = FakeClock()
        async with app_pool(database) as pool:
            copy_a = GlobalRateLimiter(clock=clock, sync_interval=NEVER)
            copy_b = GlobalRateLimiter(clock=clock, sync_interval=NEVER)
            a, b = copy_a.limit("ip", Quota(10, WINDOW)), copy_b.limit("ip", Quota(10, WINDOW))
            await copy_a.start(pool)
            await copy_b.start(pool)
            assert admitted(a, "203.0.113.7", 6) == 6
            assert await copy_a.sync()
            # B has not seen the key: its first hit is decided alone, then it learns the total.
            assert b.check("203.0.113.7") is None
            assert await copy_b.sync()
            assert admitted(b, "203.0.113.7", 10) == 3
            assert await copy_b.sync()
            # A has not seen the key since its sync: one hit is decided on what it knew then
            # (the documented one-interval staleness); from its next sync on it refuses.
            assert a.check("203.0.113.7") is None
            assert await copy_a.sync()
            assert admitted(a, "203.0.113.7", 10) == 0
            assert admitted(b, "203.0.113.7", 10) == 0
            await copy_a.stop()
            await copy_b.stop()
        assert await stored_total(owner, "ip:203.0.113.7") == 11

    async def test_previous_window_is_shared_too(self, database: ProvisionedDatabase) -> None:
        t0 = window_start()
        clock = FakeClock(t0 + WINDOW - 1)
        async with app_pool(database) as pool:
            copy_a = GlobalRateLimiter(clock=clock, sync_interval=NEVER)
            copy_b = GlobalRateLimiter(clock=clock, sync_interval=NEVER)
            a, b = copy_a.limit("user", Quota(10, WINDOW)), copy_b.limit("user", Quota(10, WINDOW))
            await copy_a.start(pool)
            await copy_b.start(pool)
            assert admitted(a, "auth0|ada", 10) == 10
            assert await copy_a.sync()
            # Next window, on a copy that never saw this user: it reads the previous window's
            # total at its first sync and refuses from then on.
            clock.now = t0 + WINDOW + 1
            b.check("auth0|ada")
            assert await copy_b.sync()
            wait = b.check("auth0|ada")
            assert wait is not None
            # 10 hits last window weigh 10 * (1 - f); with one this window, one more fits
            # when that is <= 8: f = 0.2, about 11 s after this second into the window.
            assert wait == pytest.approx(WINDOW * 0.2 - 1, abs=0.01)
            await copy_a.stop()
            await copy_b.stop()

    async def test_copies_syncing_in_the_background_stay_near_the_limit(
        self, database: ProvisionedDatabase, owner: asyncpg.Connection
    ) -> None:
        """Two copies, each hit 200 times a second for 1.5 s; a limit of 100 an hour."""
        interval, limit = 0.1, 100
        async with app_pool(database) as pool:
            copies = [GlobalRateLimiter(sync_interval=interval) for _ in range(2)]
            limits = [c.limit("ip", Quota(limit, 3600)) for c in copies]
            for copy in copies:
                await copy.start(pool)
            allowed = 0
            deadline = time.perf_counter() + 1.5
            while time.perf_counter() < deadline:
                allowed += sum(lim.check("192.0.2.1") is None for lim in limits)
                await asyncio.sleep(0.005)
            for copy in copies:
                await copy.stop()
        # Unshared, each copy would admit 100. Shared, the overshoot is what the other copy
        # admitted in about two sync intervals: 200/s * 0.2 s = 40.
        assert limit <= allowed <= limit + 50
        assert await stored_total(owner, "ip:192.0.2.1") == allowed  # stop() flushed all

    async def test_starts_on_the_apps_database(
        self, database: ProvisionedDatabase, owner: asyncpg.Connection
    ) -> None:
        db = create_database(database.app_url, min_size=1, max_size=2)
        await db.connect()
        try:
            limiter = GlobalRateLimiter(sync_interval=0.05)
            per_user = limiter.limit("user", Quota(100, WINDOW))
            await limiter.start(db)
            assert admitted(per_user, "auth0|ada", 3) == 3
            for _ in range(100):  # the background task flushes within a few intervals
                if await stored_total(owner, "user:auth0|ada") == 3:
                    break
                await asyncio.sleep(0.05)
            assert await stored_total(owner, "user:auth0|ada") == 3
            await limiter.stop()
        finally:
            await db.disconnect()

    async def test_database_down_still_limits_locally(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        # A port nothing listens on: every connection attempt is refused.
        pool = await asyncpg.create_pool(
            "postgresql://nobody@127.0.0.1:9/none", min_size=0, max_size=1
        )
        limiter = GlobalRateLimiter(sync_interval=0.05, sync_timeout=1.0)
        per_ip = limiter.limit("ip", Quota(5, WINDOW))
        with caplog.at_level(logging.WARNING, logger="app.ratelimit"):
            await limiter.start(pool)
            assert admitted(per_ip, "203.0.113.7", 20) == 5
            await asyncio.sleep(0.2)  # several failing syncs
            assert admitted(per_ip, "203.0.113.7", 20) == 0
            await limiter.stop()
        await pool.close()
        assert not limiter.healthy
        assert any("unreachable" in r.getMessage() for r in caplog.records)

    async def test_outage_then_recovery_delivers_the_kept_hits(
        self, database: ProvisionedDatabase, owner: asyncpg.Connection
    ) -> None:
        limiter = GlobalRateLimiter(sync_interval=NEVER, sync_timeout=1.0)
        per_ip = limiter.limit("ip", Quota(10, 3600))
        admin = await asyncpg.connect(asyncpg_dsn(database.admin_url))
        async with app_pool(database) as pool:
            await limiter.start(pool)
            assert admitted(per_ip, "203.0.113.9", 3) == 3
            assert await limiter.sync()
            # The database goes away: open connections are cut, new ones refused.
            await admin.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                database.name,
            )
            try:
                assert admitted(per_ip, "203.0.113.9", 4) == 4
                assert not await limiter.sync()
                assert not await limiter.sync()
                assert admitted(per_ip, "203.0.113.9", 10) == 3
            finally:
                await admin.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS true')
                await admin.close()
            assert await limiter.sync()
            assert limiter.healthy
            await limiter.stop()
        check = await asyncpg.connect(asyncpg_dsn(database.owner_url))
        try:
            assert await stored_total(check, "ip:203.0.113.9") == 10
        finally:
            await check.close()

    async def test_purge_deletes_only_expired_windows(
        self, database: ProvisionedDatabase, owner: asyncpg.Connection
    ) -> None:
        an_hour_ago = FakeClock(time.time() - 3600)
        async with app_pool(database) as pool:
            old = GlobalRateLimiter(clock=an_hour_ago, sync_interval=NEVER)
            new = GlobalRateLimiter(sync_interval=NEVER)
            old_limit, new_limit = old.limit("ip", Quota(5, 60)), new.limit("ip", Quota(5, 60))
            await old.start(pool)
            await new.start(pool)
            for i in range(3):
                old_limit.check(f"10.0.0.{i}")
                new_limit.check(f"10.0.0.{i}")
            assert await old.sync()
            assert await new.sync()
            assert await owner.fetchval("SELECT count(*) FROM rate_counters") == 6
            assert await new.purge() == 3
            left = await owner.fetch("SELECT window_start FROM rate_counters")
            assert len(left) == 3
            assert all(time.time() - r["window_start"].timestamp() < 120 for r in left)
            await old.stop()
            await new.stop()

    async def test_app_role_may_use_the_table(self, database: ProvisionedDatabase) -> None:
        conn = await asyncpg.connect(asyncpg_dsn(database.app_url))
        try:
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                assert await conn.fetchval(
                    "SELECT has_table_privilege('rate_counters', $1)", privilege
                )
        finally:
            await conn.close()


# --- Shared through Redis (when the package and a server are there) -----------------------


@pytest.fixture
async def redis_stores(redis_url: str) -> AsyncIterator[tuple[RedisCounters, RedisCounters]]:
    """Two copies' stores on the test Redis, under a prefix of their own (deleted after)."""
    prefix = f"bff:test:{uuid.uuid4().hex}:"
    stores = (
        RedisCounters.from_url(redis_url, timeout=1.0),
        RedisCounters.from_url(redis_url, timeout=1.0),
    )
    for store in stores:
        store.prefix = prefix
    client = stores[0].client
    yield stores
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    for store in stores:
        await store.aclose()


class TestRedis:
    async def test_two_copies_share_one_budget(
        self, redis_stores: tuple[RedisCounters, RedisCounters]
    ) -> None:
        clock = FakeClock()
        copy_a = GlobalRateLimiter(clock=clock, sync_interval=NEVER)
        copy_b = GlobalRateLimiter(clock=clock, sync_interval=NEVER)
        a, b = copy_a.limit("ip", Quota(10, WINDOW)), copy_b.limit("ip", Quota(10, WINDOW))
        await copy_a.start(redis_stores[0])
        await copy_b.start(redis_stores[1])
        assert admitted(a, "203.0.113.7", 6) == 6
        assert await copy_a.sync()
        b.check("203.0.113.7")
        assert await copy_b.sync()
        assert admitted(b, "203.0.113.7", 10) == 3
        assert await copy_b.sync()
        a.check("203.0.113.7")  # stale by one interval, as with Postgres
        assert await copy_a.sync()
        assert admitted(a, "203.0.113.7", 10) == 0
        client = redis_stores[0].client
        name = f"{redis_stores[0].prefix}ip:203.0.113.7:{int(clock.now * 1000)}"
        assert await client.get(name) == b"11"
        assert 0 < await client.pttl(name) <= (2 * WINDOW + 30) * 1000  # Redis expires it
        await copy_a.stop()
        await copy_b.stop()

    async def test_redis_down_still_limits_locally(self) -> None:
        import_redis()
        store = RedisCounters.from_url("redis://127.0.0.1:9/0", timeout=0.5)
        limiter = GlobalRateLimiter(sync_interval=NEVER)
        per_ip = limiter.limit("ip", Quota(5, WINDOW))
        await limiter.start(store)
        assert admitted(per_ip, "a", 10) == 5
        assert not await limiter.sync()
        assert admitted(per_ip, "a", 10) == 0
        await limiter.stop()

    async def test_redis_url_selects_redis(
        self,
        redis_stores: tuple[RedisCounters, RedisCounters],
        redis_url: str,
        database: ProvisionedDatabase,
    ) -> None:
        key = f"198.51.100.7-{uuid.uuid4().hex}"
        limiter = GlobalRateLimiter(sync_interval=NEVER)
        per_ip = limiter.limit("ip", Quota(5, WINDOW))
        async with app_pool(database) as pool:
            await limiter.start(pool, redis_url=redis_url)
            per_ip.check(key)
            assert await limiter.sync()
            await limiter.stop()
            assert await pool.fetchval("SELECT count(*) FROM rate_counters") == 0
        client = redis_stores[0].client
        names = [name async for name in client.scan_iter(match=f"bff:rl:ip:{key}:*")]
        assert len(names) == 1
        await client.delete(*names)

    async def test_redis_url_without_the_package_is_refused_not_replaced_by_postgres(
        self,
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Counts shared through Postgres while the operator believes Redis shares them would
        hide a configuration mistake; the settings refuse it at start-up first."""
        monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # import fails as if absent
        limiter = GlobalRateLimiter(sync_interval=NEVER)
        per_ip = limiter.limit("ip", Quota(5, WINDOW))
        async with app_pool(database) as pool:
            with pytest.raises(ImportError):
                await limiter.start(pool, redis_url="redis://127.0.0.1:6379/0")
            per_ip.check("203.0.113.7")
            assert not await limiter.sync()  # no store: nothing shared anywhere
        assert await stored_total(owner, "ip:203.0.113.7") == 0
