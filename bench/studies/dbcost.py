"""CPU cost of the read path's database work, piece by piece, on one connection.

    python -m bench.studies.dbcost [--calls 300]

Provisions a throwaway database (dropped at the end), puts 100 patients in one scope, and
times each variant over `--calls` calls after a warm-up: the client's CPU time (this
process, `time.process_time`), the Postgres backend's CPU time (psutil on its pid) and the
wall time, per call. No HTTP, no concurrency: what is left is what each round trip and the
audit write cost, which the load test cannot separate. The variants are the levers the
profile points at: the pool's reset on release, the transaction around the read, and how
many audit rows a page writes.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import psutil  # type: ignore[import-untyped]

from app.audit.batcher import record_many
from app.audit.events import Actor, Event
from app.audit.record import record_events
from app.core.db import asyncpg_dsn
from app.patients.events import read_event
from app.patients.search import list_patients
from devkit.db import LOCAL_SERVER_URL, drop, provision

BATCH = 16  # reads per group commit: about what 64 connections give in the load test

SCOPE = "org:dbcost"


def _backend_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _rollback_only(conn: asyncpg.Connection) -> None:
    """A pool reset that only ends a transaction left open (no round trip otherwise)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def _timed(label: str, pid: int, call: Callable[[], Awaitable[None]], calls: int) -> None:
    for _ in range(20):
        await call()
    cpu, backend, wall = time.process_time(), _backend_cpu(pid), time.perf_counter()
    for _ in range(calls):
        await call()
    cpu = (time.process_time() - cpu) / calls * 1e6
    backend = (_backend_cpu(pid) - backend) / calls * 1e6
    wall = (time.perf_counter() - wall) / calls * 1e6
    print(f"| {label} | {cpu:,.0f} | {backend:,.0f} | {wall:,.0f} |", flush=True)


async def measure(admin_url: str, calls: int) -> None:
    db = await provision(admin_url, f"bench_dbcost_{uuid.uuid4().hex[:6]}")
    try:
        owner = await asyncpg.connect(asyncpg_dsn(db.owner_url))
        await owner.executemany(
            "INSERT INTO patients (scope, created_by, given_name, family_name, birth_date) "
            "VALUES ($1, 'auth0|dbcost', 'Ana', 'Silva', '1980-01-01')",
            [(SCOPE,)] * 100,
        )
        await owner.execute("VACUUM ANALYZE patients")
        await owner.close()
        dsn = asyncpg_dsn(db.app_url)
        default = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        light = await asyncpg.create_pool(dsn, min_size=1, max_size=1, reset=_rollback_only)
        actor = Actor(SCOPE, "auth0|dbcost", "spa", "sid", "jti", "127.0.0.1", "wrk", "req")
        try:
            async with default.acquire() as conn:
                default_pid = await conn.fetchval("SELECT pg_backend_pid()")
            async with light.acquire() as conn:
                light_pid = await conn.fetchval("SELECT pg_backend_pid()")

            async def release_default() -> None:
                async with default.acquire():
                    pass

            async def release_light() -> None:
                async with light.acquire():
                    pass

            batched: list[tuple[Actor, Sequence[Event]]] = []
            others = [  # concurrent readers are in scopes of their own
                Actor(f"org:dbcost-{n}", "auth0|dbcost", "spa", "sid", "jti", "127.0.0.1", "wrk")
                for n in range(BATCH)
            ]

            async def read_batched() -> None:  # as the service does now (app/audit/batcher.py)
                async with light.acquire() as conn:
                    rows, _ = await list_patients(conn, SCOPE, limit=20)
                    events = [read_event(r["id"], "search") for r in rows]
                    batched.append((others[len(batched)], events))
                    if len(batched) == BATCH:  # BATCH reads waiting together: one statement
                        await record_many(conn, batched)
                        batched.clear()

            async def read_now() -> None:  # as app/patients/endpoints.py did before group commit
                async with default.acquire() as conn, conn.transaction():
                    rows, _ = await list_patients(conn, SCOPE, limit=20)
                    await record_events(conn, actor, [read_event(r["id"], "search") for r in rows])

            async def read_autocommit() -> None:
                async with light.acquire() as conn:
                    rows, _ = await list_patients(conn, SCOPE, limit=20)
                    await record_events(conn, actor, [read_event(r["id"], "search") for r in rows])

            async def read_one_row() -> None:
                async with light.acquire() as conn:
                    rows, _ = await list_patients(conn, SCOPE, limit=20)
                    await record_events(conn, actor, [read_event(rows[0]["id"], "search")])

            async def page_only() -> None:
                async with light.acquire() as conn:
                    await list_patients(conn, SCOPE, limit=20)

            print("| per call | client CPU µs | backend CPU µs | wall µs |")
            print("|---|--:|--:|--:|")
            await _timed("acquire + release, asyncpg's default reset", default_pid,
                         release_default, calls)  # fmt: skip
            await _timed("acquire + release, rollback-only reset", light_pid, release_light, calls)
            await _timed("page SELECT only (floor-like)", light_pid, page_only, calls)
            await _timed(f"read now: page, then 20 audit rows appended with {BATCH - 1} other "
                         "reads' (group commit)", light_pid, read_batched, calls)  # fmt: skip
            await _timed("read as before: transaction, page, 20 audit rows", default_pid,
                         read_now, calls)  # fmt: skip
            await _timed("read, autocommit page + 20-row append, light reset", light_pid,
                         read_autocommit, calls)  # fmt: skip
            await _timed("read, autocommit page + 1-row append, light reset", light_pid,
                         read_one_row, calls)  # fmt: skip
        finally:
            await default.close()
            await light.close()
    finally:
        await drop(db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--admin-url", default=LOCAL_SERVER_URL)
    args = parser.parse_args()
    asyncio.run(measure(args.admin_url, args.calls))


if __name__ == "__main__":
    main()
