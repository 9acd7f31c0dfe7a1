"""Per-IP and per-user limits: decided in memory, shared across copies through Postgres/Redis."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.core.db import asyncpg_dsn, create_database
from app.core.errors import TooManyRequests
from app.dev.db import ProvisionedDatabase
from app.http import problems
from app.ratelimit import (
    MAX_KEY_LENGTH,
    ClientRateLimitMiddleware,
    GlobalRateLimiter,
    Limit,
    Quota,
    RedisCounters,
    Row,
    client_key,
    retry_after,
)
from tests.fixtures.redis import import_redis
from tests.helpers import assert_problem

WINDOW = 60.0


def window_start() -> float:
    """The start of the current window. Taken when a test runs, not at import: Redis
    expires counters by the wall clock, so a fake clock must stay near it."""
    return (time.time() // WINDOW) * WINDOW


NEVER = 3600.0  # a sync interval the background task never reaches: tests sync explicitly


class FakeClock:
    def __init__(self, now: float | None = None) -> None:
        self.now = window_start() if now is None else now

    def __call__(self) -> float:
        return self.now


class RecordingStore:
    """A store that keeps counters in a dict and records each call (one per sync)."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, int], int] = {}
        self.calls: list[list[Row]] = []
        self.fail = False

    async def add_and_read(self, rows: Sequence[Row]) -> list[int]:
        if self.fail:
            raise ConnectionRefusedError("store down")
        self.calls.append(list(rows))
        totals = []
        for row in rows:
            name = (row.key, row.window_start_ms)
            self.counters[name] = self.counters.get(name, 0) + row.add
            totals.append(self.counters[name])
        return totals

    async def purge(self) -> int:
        return 0

    async def aclose(self) -> None:
        pass


def admitted(limit: Limit, key: str, times: int) -> int:
    return sum(limit.check(key) is None for _ in range(times))


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


# --- Deciding locally ----------------------------------------------------------------------


class TestQuota:
    def test_parse(self) -> None:
        assert Quota.parse("600/60") == Quota(600, 60)
        assert Quota.parse(" 5/0.5s ") == Quota(5, 0.5)
        assert Quota.parse("off") is None
        assert Quota.parse("") is None
        assert str(Quota(600, 60)) == "600/60"

    @pytest.mark.parametrize("text", ["600", "ten/60", "0/60", "5/0", "5/-1"])
    def test_parse_refuses(self, text: str) -> None:
        with pytest.raises(ValueError, match="COUNT/SECONDS"):
            Quota.parse(text)

    def test_retry_after_is_whole_seconds_at_least_one(self) -> None:
        assert retry_after(0.0001) == 1
        assert retry_after(1.2) == 2
        assert retry_after(72.0) == 72


class TestLocalLimit:
    def test_allows_the_quota_then_refuses_with_a_wait(self) -> None:
        clock = FakeClock()
        per_ip = GlobalRateLimiter(clock=clock).limit("ip", Quota(5, WINDOW))
        assert [per_ip.check("203.0.113.7") for _ in range(5)] == [None] * 5
        wait = per_ip.check("203.0.113.7")
        # Five hits this window: the next one fits once 1/5 of them has slid out, i.e. a
        # fifth of the way into the next window (the estimate spreads them evenly).
        assert wait == pytest.approx(WINDOW * 1.2, abs=0.01)

    def test_refused_requests_do_not_count(self) -> None:
        clock = FakeClock()
        per_ip = GlobalRateLimiter(clock=clock).limit("ip", Quota(5, WINDOW))
        assert admitted(per_ip, "a", 50) == 5
        wait = per_ip.check("a")
        assert wait is not None
        clock.now += wait
        assert per_ip.check("a") is None
        assert per_ip.check("a") is not None

    def test_keys_and_limits_are_independent(self) -> None:
        limiter = GlobalRateLimiter(clock=FakeClock())
        per_ip = limiter.limit("ip", Quota(2, WINDOW))
        per_user = limiter.limit("user", Quota(3, WINDOW))
        assert admitted(per_ip, "a", 10) == 2
        assert admitted(per_ip, "b", 10) == 2
        assert admitted(per_user, "a", 10) == 3

    def test_window_roll_over_frees_the_budget(self) -> None:
        t0 = window_start()
        clock = FakeClock(t0 + WINDOW - 1)  # the last second of a window
        per_user = GlobalRateLimiter(clock=clock).limit("user", Quota(10, WINDOW))
        assert admitted(per_user, "auth0|ada", 20) == 10
        # Just after the boundary the previous window still weighs almost fully: no double
        # burst, as a plain fixed window would allow.
        clock.now = t0 + WINDOW + 1
        assert admitted(per_user, "auth0|ada", 20) == 0
        # Half-way through, half of the previous window's weight has slid out.
        clock.now = t0 + WINDOW * 1.5
        assert admitted(per_user, "auth0|ada", 20) == 5
        # Two windows later nothing remains of either.
        clock.now = t0 + WINDOW * 3
        assert admitted(per_user, "auth0|ada", 20) == 10

    def test_enforce_raises_429_with_retry_after(self) -> None:
        per_user = GlobalRateLimiter(clock=FakeClock()).limit("user", Quota(1, WINDOW))
        per_user.enforce("auth0|ada")
        with pytest.raises(TooManyRequests) as caught:
            per_user.enforce("auth0|ada")
        assert caught.value.status == 429
        # With a quota of one, the one hit keeps weighing until the end of the next window.
        assert caught.value.headers == {"Retry-After": "120"}

    def test_long_keys_are_stored_as_a_digest(self) -> None:
        limiter = GlobalRateLimiter(clock=FakeClock())
        per_user = limiter.limit("user", Quota(1, WINDOW))
        assert per_user.check("x" * 10_000) is None
        assert per_user.check("x" * 10_000) is not None
        assert len(per_user) == 1
        [key] = per_user._entries
        assert key.startswith("sha256:")
        assert len(key) <= MAX_KEY_LENGTH

    def test_memory_stays_bounded_under_100k_random_keys(self) -> None:
        clock = FakeClock()
        limiter = GlobalRateLimiter(clock=clock, max_keys=10_000)
        per_ip = limiter.limit("ip", Quota(3, WINDOW))
        rng = random.Random(7)
        flood = [str(ipaddress.IPv4Address(n)) for n in rng.sample(range(2**32), 100_000)]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i, address in enumerate(flood):
                # A real client keeps hitting among the flood and stays limited.
                if i % 50 == 0:
                    per_ip.check("198.51.100.1")
                per_ip.check(address)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(per_ip) == 10_000
        assert per_ip.evicted == 100_001 - 10_000  # the flood, and the client kept
        assert grown < 10_000 * 1024  # about 400 bytes a key, not 100k keys' worth
        assert per_ip.check("198.51.100.1") is not None  # recently used: never evicted

    async def test_idle_keys_are_forgotten_at_the_next_sync(self) -> None:
        clock = FakeClock()
        limiter = GlobalRateLimiter(clock=clock)
        per_ip = limiter.limit("ip", Quota(3, WINDOW))
        for i in range(1000):
            per_ip.check(f"10.0.{i // 256}.{i % 256}")
        clock.now += WINDOW
        per_ip.check("10.9.9.9")
        await limiter.sync()
        assert len(per_ip) == 1001  # the previous window still counts
        clock.now += WINDOW
        await limiter.sync()
        assert len(per_ip) == 1  # two windows idle: nothing of theirs counts any more

    def test_check_costs_microseconds(self) -> None:
        per_ip = GlobalRateLimiter().limit("ip", Quota(10**9, WINDOW))
        started = time.perf_counter()
        for _ in range(100_000):
            per_ip.check("203.0.113.7")
        per_call = (time.perf_counter() - started) / 100_000
        assert per_call < 20e-6  # about 1 µs; generous for slow CI machines


class TestSyncProtocol:
    async def test_one_store_call_per_sync_for_all_keys_and_none_per_check(self) -> None:
        clock, store = FakeClock(), RecordingStore()
        limiter = GlobalRateLimiter(clock=clock, sync_interval=NEVER)
        per_ip = limiter.limit("ip", Quota(1000, WINDOW))
        per_user = limiter.limit("user", Quota(1000, WINDOW))
        await limiter.start(store)
        for i in range(1000):
            per_ip.check(f"10.0.0.{i % 200}")
            per_user.check(f"auth0|{i % 7}")
        assert store.calls == []
        assert await limiter.sync()
        assert len(store.calls) == 1
        added = {(r.key, r.add) for r in store.calls[0] if r.add}
        assert ("ip:10.0.0.0", 5) in added
        assert ("user:auth0|0", 143) in added
        assert sum(r.add for r in store.calls[0]) == 2000
        await limiter.stop()

    async def test_a_failed_sync_keeps_the_hits_for_the_next(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        clock, store = FakeClock(), RecordingStore()
        limiter = GlobalRateLimiter(clock=clock, sync_interval=NEVER)
        per_ip = limiter.limit("ip", Quota(10, WINDOW))
        await limiter.start(store)
        store.fail = True
        assert admitted(per_ip, "a", 4) == 4
        with caplog.at_level(logging.WARNING, logger="app.ratelimit"):
            assert not await limiter.sync()
            assert admitted(per_ip, "a", 2) == 2
            assert not await limiter.sync()
        assert not limiter.healthy
        assert [r.getMessage() for r in caplog.records].count(
            "rate-limit counters unreachable (ConnectionRefusedError); limiting per copy until back"
        ) == 1  # once per outage, not once per tick
        assert admitted(per_ip, "a", 10) == 4  # still limited, from memory
        store.fail = False
        assert await limiter.sync()
        assert store.counters[("ip:a", int(clock.now * 1000))] == 10
        await limiter.stop()


class TestHttp:
    @staticmethod
    def app(per_ip: Limit, per_user: Limit) -> Starlette:
        """Wired as the service wires it: the per-IP middleware, the per-user check after
        the token (here: a header) is verified."""

        async def endpoint(request: Request) -> Response:
            per_user.enforce(request.headers["x-user"])
            return JSONResponse({"ok": True})

        return Starlette(
            routes=[Route("/", endpoint)],
            middleware=[Middleware(ClientRateLimitMiddleware, limit=per_ip)],
            exception_handlers=problems.EXCEPTION_HANDLERS,
        )

    @staticmethod
    def client(app: Starlette, ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 4711))
        return httpx.AsyncClient(transport=transport, base_url="http://t")

    def assert_429(self, response: httpx.Response, detail: str) -> None:
        body = assert_problem(response, 429, request_id=False)
        assert int(response.headers["retry-after"]) >= 1
        assert body["type"].endswith("/rate-limited")
        assert detail in body["detail"]

    async def test_per_ip_refusal(self) -> None:
        limiter = GlobalRateLimiter(clock=FakeClock())
        app = self.app(limiter.limit("ip", Quota(2, WINDOW)), limiter.limit("user", Quota(9, 60)))
        async with self.client(app, "203.0.113.7") as http:
            ok = [(await http.get("/", headers={"x-user": "u1"})).status_code for _ in range(2)]
            refused = await http.get("/", headers={"x-user": "u2"})
        assert ok == [200, 200]
        self.assert_429(refused, "this address")
        assert refused.headers["retry-after"] == "90"  # half of the 2 slid out of the next window
        async with self.client(app, "203.0.113.8") as http:
            assert (await http.get("/", headers={"x-user": "u3"})).status_code == 200

    async def test_per_user_refusal(self) -> None:
        limiter = GlobalRateLimiter(clock=FakeClock())
        app = self.app(limiter.limit("ip", Quota(99, WINDOW)), limiter.limit("user", Quota(2, 60)))
        statuses = []
        for ip in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
            async with self.client(app, ip) as http:
                statuses.append((await http.get("/", headers={"x-user": "auth0|ada"})).status_code)
        assert statuses == [200, 200, 429]
        async with self.client(app, "203.0.113.4") as http:
            self.assert_429(await http.get("/", headers={"x-user": "auth0|ada"}), "try again")
            assert (await http.get("/", headers={"x-user": "auth0|bob"})).status_code == 200

    @pytest.mark.parametrize(
        ("host", "key"),
        [
            ("203.0.113.7", "203.0.113.7"),
            ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
            ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("not-an-ip", "not-an-ip"),
        ],
    )
    def test_client_key(self, host: str, key: str) -> None:
        assert client_key(host) == key


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

    async def test_redis_url_without_the_package_falls_back_to_postgres(
        self,
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # import fails as if absent
        limiter = GlobalRateLimiter(sync_interval=NEVER)
        per_ip = limiter.limit("ip", Quota(5, WINDOW))
        async with app_pool(database) as pool:
            with caplog.at_level(logging.WARNING, logger="app.ratelimit"):
                await limiter.start(pool, redis_url="redis://127.0.0.1:6379/0")
            per_ip.check("203.0.113.7")
            assert await limiter.sync()
            await limiter.stop()
        assert await stored_total(owner, "ip:203.0.113.7") == 1
        assert "redis package is not installed" in caplog.text
