"""How to store "which patients did this audit event show": the narrow link table the
service uses (migrations/0008) against an array column with a GIN index.

    python -m bench.studies.linkcost [--events 200000] [--ids 20] [--calls 300]

On a throwaway database, both structures are grown to `--events` events of `--ids` patients
each (patients drawn from a pool, a few of them "hot", seen far more often than the rest,
as a ward's patients are), then measured the same way, on one connection, after a warm-up:

- append: the Postgres backend's CPU time and the wall time to add one event's links;
- lookup: a keyset page of the 50 newest events that showed one patient (a hot one and a
  cold one), which is what `?patient_id=` and the access report do.

It also prints each structure's size. Figures only; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import psutil  # type: ignore[import-untyped]

from app.core.db import asyncpg_dsn
from devkit.db import LOCAL_SERVER_URL, drop, provision

SETUP = """
CREATE TABLE link_narrow (
    patient_id uuid NOT NULL, seq bigint NOT NULL, recorded_at timestamptz NOT NULL,
    PRIMARY KEY (patient_id, seq));
CREATE TABLE link_array (
    seq bigint PRIMARY KEY, recorded_at timestamptz NOT NULL, patient_ids uuid[] NOT NULL);
CREATE INDEX link_array_gin ON link_array USING gin (patient_ids);
"""
GROW_NARROW = """
INSERT INTO link_narrow (patient_id, seq, recorded_at)
SELECT DISTINCT p, s, now() FROM unnest($1::uuid[], $2::bigint[]) AS u(p, s)
"""
GROW_ARRAY = """
INSERT INTO link_array (seq, recorded_at, patient_ids)
SELECT s, now(), ids FROM unnest($1::bigint[], $2::text[]) AS u(s, ids_text),
    LATERAL (SELECT ids_text::uuid[] AS ids) AS x
"""
APPEND_NARROW = """
INSERT INTO link_narrow (patient_id, seq, recorded_at)
SELECT DISTINCT p, $2::bigint, now() FROM unnest($1::uuid[]) AS p
"""
APPEND_ARRAY = "INSERT INTO link_array (seq, recorded_at, patient_ids) VALUES ($2, now(), $1)"
LOOKUP_NARROW = (
    "SELECT seq FROM link_narrow WHERE patient_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT 50"
)
LOOKUP_ARRAY = (
    "SELECT seq FROM link_array WHERE patient_ids @> ARRAY[$1]::uuid[] AND seq < $2"
    " ORDER BY seq DESC LIMIT 50"
)

TOP = 2**62  # the first page: every seq is below it


def _backend_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _timed(
    label: str, pid: int, call: Callable[[int], Awaitable[object]], calls: int
) -> tuple[float, float]:
    for i in range(20):
        await call(i)
    cpu, wall = _backend_cpu(pid), time.perf_counter()
    for i in range(calls):
        await call(20 + i)
    cpu = (_backend_cpu(pid) - cpu) / calls * 1e6
    wall = (time.perf_counter() - wall) / calls * 1e6
    print(f"| {label} | {cpu:,.0f} | {wall:,.0f} |", flush=True)
    return cpu, wall


def _pick(
    rng: random.Random, pool: list[uuid.UUID], hot: list[uuid.UUID], k: int
) -> list[uuid.UUID]:
    chosen = rng.sample(pool, k - 2) + rng.sample(hot, 2)
    return chosen


async def measure(admin_url: str, events: int, ids: int, calls: int) -> None:
    rng = random.Random(15)
    pool = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(max(1000, events // 4))]
    hot = pool[:50]
    cold = pool[-1]
    db = await provision(admin_url, f"bench_linkcost_{uuid.uuid4().hex[:6]}")
    try:
        conn = await asyncpg.connect(asyncpg_dsn(db.owner_url))
        await conn.execute(SETUP)
        started = time.perf_counter()
        block = 5000
        for first in range(1, events + 1, block):
            seqs = list(range(first, min(first + block, events + 1)))
            shown = [_pick(rng, pool, hot, ids) for _ in seqs]
            await conn.execute(
                GROW_NARROW,
                [p for group in shown for p in group],
                [s for s, group in zip(seqs, shown, strict=True) for _ in group],
            )
            await conn.execute(
                GROW_ARRAY, seqs, ["{" + ",".join(map(str, group)) + "}" for group in shown]
            )
        await conn.execute("VACUUM ANALYZE link_narrow")
        await conn.execute("VACUUM ANALYZE link_array")
        grown = time.perf_counter() - started
        print(f"\nGrown to {events:,} events of {ids} patients each in {grown:.0f} s.\n")
        print("| structure | size (table + indexes) |\n|---|--:|")
        for table in ("link_narrow", "link_array"):
            size = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
            print(f"| {table} | {size / 2**20:,.0f} MiB |")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        print("\n| per call | Postgres CPU µs | wall µs |\n|---|--:|--:|")
        next_seq = events + 1
        appends = max(calls, 20_000 * ids // 20)
        page = [_pick(rng, pool, hot, ids) for _ in range(appends + 20)]

        async def append_batch(statement: str, first: int) -> None:
            # 16 events a transaction, as the group commit writes reads; GIN's pending
            # list fills and is merged within the run, so its cost is in the figure.
            async with conn.transaction():
                for i in range(first, first + 16):
                    await conn.execute(statement, page[i % len(page)], next_seq + i)

        for label, statement in (("narrow", APPEND_NARROW), ("GIN", APPEND_ARRAY)):
            cpu, wall = _backend_cpu(pid), time.perf_counter()
            for first in range(0, appends, 16):
                await append_batch(statement, first)
            cpu = (_backend_cpu(pid) - cpu) / appends * 1e6
            wall = (time.perf_counter() - wall) / appends * 1e6
            print(f"| append, {label}, per event ({appends:,} events) | {cpu:,.0f} | {wall:,.0f} |")
            next_seq += appends + 20
        for name, patient in (("hot", hot[0]), ("cold", cold)):
            seen = await conn.fetchval(
                "SELECT count(*) FROM link_narrow WHERE patient_id = $1", patient
            )
            middle = await conn.fetchval(
                "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY seq) FROM link_narrow"
                " WHERE patient_id = $1",
                patient,
            )
            for where, below in (("first page", TOP), ("a page halfway down", middle)):
                for label, statement in (("narrow", LOOKUP_NARROW), ("GIN", LOOKUP_ARRAY)):
                    await _timed(
                        f"lookup, {name} patient ({seen:,} events), {where}, {label}",
                        pid,
                        lambda i, q=statement, p=patient, b=below: conn.fetch(q, p, b),  # type: ignore[misc]
                        calls,
                    )
        await conn.close()
    finally:
        await drop(db)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.linkcost", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--ids", type=int, default=20, help="patients per event")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--admin-url", default=LOCAL_SERVER_URL)
    args = parser.parse_args()
    asyncio.run(measure(args.admin_url, args.events, args.ids, args.calls))


if __name__ == "__main__":
    main()
