"""The sync task (app/ratelimit/sync.py): one store call per sync for every key, and the hits
kept through a failed one."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from app.ratelimit import GlobalRateLimiter, Quota, Row
from tests.ratelimit.support import NEVER, WINDOW, FakeClock, admitted


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
