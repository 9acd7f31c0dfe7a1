"""The Log Streams webhook cannot be used to amplify or stall. At most
LOG_STREAM_MAX_ITEMS entries a request, a capped report, validation that gives the event
loop back, and log dates inside a sane window."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import respx

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import Running, account_app
from tests.fixtures.settings import make_settings
from tests.fixtures.tenant import LOG_STREAM_TOKEN
from tests.helpers import assert_problem, everything_stored

HOOK = "/hooks/auth0/log-stream"
SECRET = {"Authorization": LOG_STREAM_TOKEN}
# The loop may be held this long at once while a batch is validated ("a few milliseconds";
# validating the largest batch in one go holds it for tens of them).
MAX_STALL_SECONDS = 0.010


def when(**delta: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(**delta)).isoformat()


def log(log_id: str, date: str | None = None) -> dict[str, Any]:
    return {
        "log_id": log_id,
        "data": {"type": "s", "date": date or when(hours=-1), "user_id": "auth0|ada"},
    }


def useless(index: int) -> dict[str, Any]:
    """A record that fails on every field validation looks at: the slowest to refuse."""
    bad = {"type": "S!", "date": "yesterday", "ip": "999.0.0.1", "user_id": "", "log_id": "x y"}
    return {"log_id": f"bad {index}", "data": {**bad, "client_id": "c" * 200}}


@pytest.fixture
async def running(settings: Settings, tenant: respx.MockRouter) -> AsyncIterator[Running]:
    async with account_app(settings) as app:
        yield app


class TestAmplification:
    async def test_a_megabyte_of_tiny_items_is_413_and_stores_nothing(
        self, running: Running, owner: asyncpg.Connection
    ) -> None:
        body = b"[" + b",".join([b"1"] * 340_000) + b"]"
        assert len(body) < 1024 * 1024
        response = await running.http.post(HOOK, headers=SECRET, content=body)
        problem = assert_problem(response, 413, "body")
        assert "at most 1000 entries" in problem["detail"]
        assert len(response.content) < 1000
        assert await everything_stored(owner) == ""

    async def test_one_entry_over_the_limit_is_413(
        self, running: Running, owner: asyncpg.Connection
    ) -> None:
        over = [log(f"L{i}") for i in range(1001)]
        response = await running.http.post(HOOK, headers=SECRET, json=over)
        assert_problem(response, 413, "body")
        assert await everything_stored(owner) == ""
        at_limit = await running.http.post(HOOK, headers=SECRET, json=over[:1000])
        assert at_limit.status_code == 200
        assert at_limit.json()["stored"] == 1000

    async def test_json_lines_are_counted_before_they_are_parsed(
        self, database: ProvisionedDatabase, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        settings = make_settings(database, log_stream_max_items=3)
        lines = [orjson.dumps(log(f"L{i}")) for i in range(4)]
        async with account_app(settings) as app:
            over = await app.http.post(HOOK, headers=SECRET, content=b"\n".join(lines))
            assert_problem(over, 413, "body")
            assert await everything_stored(owner) == ""
            spaced = b"\n\n  \n".join(lines[:3]) + b"\n" * 5000  # blank lines are no entries
            ok = await app.http.post(HOOK, headers=SECRET, content=spaced)
        assert ok.json()["stored"] == 3

    async def test_the_report_lists_at_most_100_rejections_and_counts_the_rest(
        self, running: Running, owner: asyncpg.Connection
    ) -> None:
        batch: list[Any] = [log("L0"), *([7] * 999)]
        response = await running.http.post(HOOK, headers=SECRET, json=batch)
        assert response.status_code == 207
        report = response.json()
        assert (report["received"], report["stored"]) == (1000, 1)
        assert [r["index"] for r in report["rejected"]] == list(range(1, 101))
        assert report["more_rejected"] == 899
        assert len(response.content) < 10_000


class TestStall:
    async def test_validating_the_largest_batch_never_holds_the_loop(
        self, database: ProvisionedDatabase, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        """However fast the machine, the batch grows from the default largest (1,000 records)
        until handling it keeps the loop's thread busy for MEASURABLE_SECONDS, five times the
        longest hold allowed: validated in one go, it would then show as one stall that long.
        Every size tried is held to the limit."""
        settings = make_settings(
            database, log_stream_max_items=MAX_BATCH, max_body_bytes=MAX_BATCH * 400
        )
        async with account_app(settings) as running:
            await running.http.get("/healthz")  # everything imported and warm
            await asyncio.sleep(0.5)  # the start-up purges are done
            size = 1000
            while True:
                busy, stalls, response = await _held(running, size)
                assert response.status_code == 207
                assert len(response.json()["rejected"]) == 100
                longest = max(stalls)
                assert longest < MAX_STALL_SECONDS, f"{size} records held the loop {longest:.4f} s"
                if busy >= MEASURABLE_SECONDS:
                    break
                assert size < MAX_BATCH, f"{size} records took {busy:.4f} s: too quick to tell"
                # Aim a little past the mark: the parse, one piece, grows with the batch too.
                size = min(MAX_BATCH, int(size * 1.2 * MEASURABLE_SECONDS / max(busy, 0.001)))
        assert await everything_stored(owner) == ""


# Handling a batch must keep the loop's thread busy this long to tell anything (a hold of
# MAX_STALL_SECONDS is allowed); a request may carry up to MAX_BATCH records for it.
MEASURABLE_SECONDS = 5 * MAX_STALL_SECONDS
MAX_BATCH = 100_000


async def _held(running: Running, size: int) -> tuple[float, list[float], httpx.Response]:
    """Post `size` records that all fail validation: the CPU time of the loop's thread the
    request took, every stretch it held the loop for, and the response."""
    body = orjson.dumps([useless(i) for i in range(size)])
    stalls: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        # CPU time of this thread, the loop's: a busy machine's preemptions are no stall.
        last = time.thread_time()
        while not done.is_set():
            await asyncio.sleep(0)
            now = time.thread_time()
            stalls.append(now - last)
            last = now

    gc.collect()
    gc.freeze()  # a full collection of the test process's heap is no part of the batch
    try:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        started = time.thread_time()
        response = await running.http.post(HOOK, headers=SECRET, content=body)
        busy = time.thread_time() - started
        done.set()
        await task
    finally:
        gc.unfreeze()
    return busy, stalls, response


class TestDates:
    @pytest.mark.parametrize(
        "date",
        [when(days=-91), when(days=-3650), when(days=2), "2999-01-01T00:00:00Z"],
        ids=["91 days old", "10 years old", "2 days ahead", "year 2999"],
    )
    async def test_a_date_outside_the_window_is_rejected(
        self, running: Running, owner: asyncpg.Connection, date: str
    ) -> None:
        response = await running.http.post(HOOK, headers=SECRET, json=[log("L1", date)])
        assert response.status_code == 207
        [rejected] = response.json()["rejected"]
        assert (rejected["index"], rejected["log_id"]) == (0, "L1")
        assert [e["field"] for e in rejected["errors"]] == ["data.date"]
        assert await everything_stored(owner) == ""

    async def test_dates_inside_the_window_are_stored(
        self, running: Running, owner: asyncpg.Connection
    ) -> None:
        batch = [log("L1", when(days=-89)), log("L2", when(hours=20))]
        response = await running.http.post(HOOK, headers=SECRET, json=batch)
        assert response.status_code == 200
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 2
