"""Deciding locally (app/ratelimit/quota.py): the quota, and a limit's sliding window in memory."""

from __future__ import annotations

import ipaddress
import random
import time
import tracemalloc

import pytest

from app.core.errors import TooManyRequests
from app.ratelimit import MAX_KEY_LENGTH, GlobalRateLimiter, Quota, retry_after
from tests.ratelimit.support import WINDOW, FakeClock, admitted, window_start


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
