"""The benchmark's measuring aids: the audit-log grower, the fixed-rate summary."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import random
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from app.core.db import asyncpg_dsn
from bench.auditlog.grow import grow
from bench.auditlog.tables import LINK_TABLE, link_rows, link_shape
from bench.auditlog.traffic import COLUMNS, Traffic, make_scopes
from bench.harness.model import Measurement, OpenLoopCell, OpenLoopSample, Run, Sample
from bench.harness.report import cpu_table, open_loop_table
from bench.kit.breakdown import loop_lag, read_breakdown
from bench.kit.loadgen import Answer, Call, Load
from bench.kit.openloop import FixedRateResult, summarise
from bench.kit.wrk import WrkResult
from devkit.db import ProvisionedDatabase


def _records(count: int) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    rng = random.Random(3)
    traffic = Traffic(make_scopes(30, rng), rng)
    now = dt.datetime.now(dt.UTC)
    times = [now - dt.timedelta(seconds=count - n) for n in range(count)]
    links: list[tuple[Any, ...]] = []
    rows = [
        dict(zip(COLUMNS, r, strict=True))
        for r in traffic.records(list(range(1, count + 1)), times, links)
    ]
    return rows, links


def test_grown_events_look_like_one_event_per_request() -> None:
    rows, links = _records(6000)
    actions = Counter(r["action"] for r in rows)
    reads = actions["patient.searched"] + actions["patient.read"]
    assert 0.65 < reads / len(rows) < 0.75
    assert actions["patient.created"] and actions["patient.updated"]
    assert actions["user.signed_in"] and 0 < actions["access.denied"] < len(rows) * 0.05
    named = 0
    for r in rows:
        assert len(r["hash"]) == 32 and r["request_id"]
        assert r["actor"] and r["client_id"] and r["session_id"] and r["token_id"]
        assert r["source_ip"] and r["user_agent"]
        detail = orjson.loads(r["detail"])
        if r["action"] == "patient.searched":
            assert r["crud"] == "E" and r["patient_id"] is None
            assert set(detail) == {"filters", "returned", "next_page", "patient_ids"}
            assert len(detail["patient_ids"]) == detail["returned"] <= 20
            named += len(detail["patient_ids"])
        elif r["action"] == "patient.read":
            assert r["crud"] == "R" and r["patient_id"] and detail == {"via": "get"}
        if r["action"] == "access.denied":
            assert r["outcome"] == "denied"
        else:
            assert r["outcome"] == "success"
        named += r["patient_id"] is not None
    assert len(links) == named  # one link per patient an event names
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    assert all(a["recorded_at"] <= b["recorded_at"] for a, b in itertools.pairwise(rows))


def test_links_in_either_shape_of_the_link_table() -> None:
    links = [("p1", 7, "t7"), ("p2", 7, "t7"), ("p3", 9, "t9")]
    assert link_rows("patient_id", links) == links
    assert link_rows("patient_ids", links) == [(7, "t7", ["p1", "p2"]), (9, "t9", ["p3"])]


def test_grown_scopes_avoid_the_loads_scopes() -> None:
    taken = {s.name for s in make_scopes(40, random.Random(9))}
    again = {s.name for s in make_scopes(40, random.Random(9), exclude=taken)}
    assert len(again) == 40 and not again & taken


async def test_grow_fills_the_log_its_partitions_and_links(database: ProvisionedDatabase) -> None:
    grown = await grow(database.owner_url, 3000, chunk=700)
    conn = await asyncpg.connect(asyncpg_dsn(database.owner_url))
    try:
        assert await conn.fetchval("SELECT count(*) FROM audit_events") == 3000
        assert grown.size.events == 3000 and grown.size.index_bytes > 0
        # Six months back, each in its monthly partition, none in the default one.
        assert await conn.fetchval("SELECT count(*) FROM audit_events_default") == 0
        oldest = await conn.fetchval("SELECT min(recorded_at) FROM audit_events")
        assert dt.datetime.now(dt.UTC) - oldest > dt.timedelta(days=150)
        # The sequence is ahead of every seq, so the service's appends never collide.
        assert await conn.fetchval(
            "SELECT max(seq) <= (SELECT last_value FROM audit_events_seq) FROM audit_events"
        )
        assert await conn.fetchval(  # analysed, so the planner knows the log's size
            "SELECT bool_and(last_analyze IS NOT NULL) FROM pg_stat_user_tables "
            "WHERE relname LIKE 'audit_events_2%'"
        )
        shape = await link_shape(conn)
        if shape is not None:  # migration 0008: every patient an event names is linked
            named = await conn.fetchval(
                "SELECT count(patient_id) + coalesce(sum(jsonb_array_length("
                "detail -> 'patient_ids')), 0) FROM audit_events"
            )
            linked = await conn.fetchval(
                f"SELECT count(*) FROM {LINK_TABLE}"
                if shape == "patient_id"
                else f"SELECT sum(cardinality(patient_ids)) FROM {LINK_TABLE}"
            )
            assert linked == named
            assert grown.link_rows == await conn.fetchval(f"SELECT count(*) FROM {LINK_TABLE}")
    finally:
        await conn.close()


async def test_grow_with_rebuilt_indexes_keeps_the_same_indexes(
    database: ProvisionedDatabase,
) -> None:
    query = (
        "SELECT array_agg(indexdef ORDER BY indexname) FROM pg_indexes "
        "WHERE tablename IN ('audit_events', 'audit_event_patients')"
    )
    conn = await asyncpg.connect(asyncpg_dsn(database.owner_url))
    try:
        before = await conn.fetchval(query)
        await grow(database.owner_url, 1500, indexes="rebuild")
        assert await conn.fetchval(query) == before
    finally:
        await conn.close()


def test_fixed_rate_latency_counts_the_wait_for_a_connection() -> None:
    # Due every 10 ms; the third waited 50 ms for a free connection, then took 5 ms.
    answers = [
        Answer("read", started=1.000, seconds=0.004, status=200, due=1.000),
        Answer("read", started=1.010, seconds=0.004, status=200, due=1.010),
        Answer("read", started=1.070, seconds=0.005, status=200, due=1.020),
        Answer("read", started=1.071, seconds=0.004, status=503, due=1.030),
    ]
    result = summarise(answers, asked=100, connections=2, seconds=0.04, pending=0)
    assert result.requests == 4 and result.ok == 3 and result.errors == 1
    assert result.late == 2
    assert round(result.p99_ms) == 5  # from the send
    assert round(result.p99_due_ms) == 55  # from when it was due
    assert result.rate == 100


async def test_raw_client_at_a_fixed_rate_reads_every_answer() -> None:
    # A loopback server answering with Content-Length, chunked, and closing every third.
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while not reader.at_eof():
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            assert head.startswith(b"GET /api/patients HTTP/1.1\r\n")
            assert b"\r\nAuthorization: Bearer t\r\n" in head
            served += 1
            if served % 3 == 0:
                writer.write(b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\nConnection: close\r\n"
                             b"Content-Length: 2\r\n\r\n{}")  # fmt: skip
                await writer.drain()
                break
            if served % 2:
                writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{"items": []}')
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\n{\"ite\r\n8\r\nms\": []}\r\n0\r\n\r\n")  # fmt: skip
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    call = Call("read", "GET", "/api/patients", {"Authorization": "Bearer t"})
    load = Load(f"http://127.0.0.1:{port}", lambda n: call, concurrency=2, rate=200.0,
                timeout=5, limit=12, raw=True)  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop, grace=5))
    await asyncio.sleep(0.3)  # 12 requests are due within 60 ms
    stop.set()
    await task
    server.close()
    await server.wait_closed()
    assert len(load.answers) == 12 and load.pending == 0
    assert Counter(a.status for a in load.answers) == {200: 8, 503: 4}
    assert all(a.retry_after == (a.status == 503) for a in load.answers)
    assert all(a.due is not None and a.since_due >= a.seconds for a in load.answers)


def _cell(target: str, rps: float, app_s: float, db_s: float) -> Measurement:
    requests = int(rps * 5)
    result = WrkResult(requests, 5.0, 10.0, 20.0, 30.0, 40.0, 0, 0, 0, 1.0)
    return Measurement(target, "read", 1, 64, [Sample(result, app_s, db_s, {})])


def test_report_splits_cpu_per_read_and_compares_fixed_rate_latency() -> None:
    args = argparse.Namespace(workers=[1], connections=[64], open_loop=0.5)
    run = Run(args, Path("/nonexistent"))
    # Per read: ours 1,000 µs service + 500 µs Postgres, the floor 400 + 250, no peer run.
    run.measurements = [_cell("ours", 1000, 5.0, 2.5), _cell("floor", 2000, 4.0, 2.5)]
    lines = cpu_table(run)
    assert lines[2] == ("| 1 | 64 | 1,000 / n/a / 400 | 2.50 MISSED | 500 / n/a / 250 | 2.00 met |")

    def fixed(target: str, p99: float, delivered: float) -> OpenLoopCell:
        result = FixedRateResult(500, 64, 5.0, int(delivered * 5), int(delivered * 5), 2.0,
                                 p99, p99, p99, 0, 0, 0.1)  # fmt: skip
        return OpenLoopCell(target, 1, 500, 64, [OpenLoopSample(result, 1.0, 0.5)])

    table = open_loop_table([fixed("ours", 9.0, 500), fixed("floor", 5.0, 500)])
    assert table[-1].endswith("ours/floor 1.80 met (target ≤ 2.0x)")
    table = open_loop_table([fixed("ours", 90.0, 300), fixed("floor", 5.0, 500)])
    assert "MISSED" in table[-1] and "not delivered to ours" in table[-1]


def test_the_breakdown_says_what_the_slowest_requests_waited_for(tmp_path: Path) -> None:
    log = tmp_path / "ours.log"
    quick = {"pool_wait": 0.01, "page_query": 0.3, "audit_wait": 0.4, "send": 0.02}
    entries = [
        {"route": "/api/patients", "status": 200, "duration_ms": 1.0, "phases_ms": quick}
        for _ in range(199)
    ]
    stalled = {**quick, "audit_wait": 40.4}
    entries.append(
        {"route": "/api/patients", "status": 200, "duration_ms": 50.0, "phases_ms": stalled}
    )
    entries.append({"route": "/api/me", "status": 200, "duration_ms": 9.0, "phases_ms": {}})
    before = b'{"msg": "earlier", "route": "/api/patients", "phases_ms": {}}\n'
    log.write_bytes(before + b"\n".join(orjson.dumps(e) for e in entries) + b"\n")

    found = read_breakdown(log, len(before), "/api/patients")
    assert found is not None and found.requests == 200
    assert found.phases["page_query"] == (0.3, 0.3)
    # The slowest 1% (two requests): one stalled 40 ms in the audit commit, one did not.
    assert found.tail["audit_wait"] == pytest.approx(20.4)
    assert found.tail["total"] == pytest.approx(25.5)
    assert found.phases["other"][0] == pytest.approx(0.27)
    assert read_breakdown(log, log.stat().st_size, "/api/patients") is None


def test_loop_lag_from_the_exposition() -> None:
    text = "\n".join(
        [
            'event_loop_lag_seconds_bucket{le="0.001"} 80.0',
            'event_loop_lag_seconds_bucket{le="0.005"} 90.0',
            'event_loop_lag_seconds_bucket{le="0.01"} 95.0',
            'event_loop_lag_seconds_bucket{le="0.05"} 99.0',
            'event_loop_lag_seconds_bucket{le="+Inf"} 100.0',
            "event_loop_lag_seconds_count 100.0",
        ]
    )
    assert loop_lag(text) == {
        "samples": 100.0,
        "over_5ms": 10.0,
        "over_10ms": 5.0,
        "over_50ms": 1.0,
    }
