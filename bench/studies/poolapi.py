"""What `databases`' public connection API costs against the asyncpg pool underneath it.

    python -m bench.studies.poolapi [--calls 3000] [--runs 7]

Provisions a throwaway database (dropped at the end) and times, in one process, one
connection at a time, per call: acquire and release alone, then acquire, `SELECT 1`,
release. `private` is what the service does (`app.core.db.connection`: `pool_of(database)`
and `acquire(timeout=...)`); `public` is the `databases` API with the same acquire timeout
(`database.connection()` entered under `asyncio.timeout`, then `connection.raw_connection`).
The variants alternate within each run; the table shows medians over the runs of the
client's CPU time and the wall time per call (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from app.core.db import ACQUIRE_TIMEOUT_SECONDS, connection, create_database
from devkit.db import LOCAL_SERVER_URL, drop, provision


async def _per_call(call: Callable[[], Awaitable[None]], calls: int) -> tuple[float, float]:
    for _ in range(200):
        await call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await call()
    return (
        (time.process_time() - cpu) / calls * 1e6,
        (time.perf_counter() - wall) / calls * 1e6,
    )


async def measure(admin_url: str, calls: int, runs: int) -> None:
    db = await provision(admin_url, f"bench_poolapi_{uuid.uuid4().hex[:6]}")
    database = create_database(db.app_url, min_size=1, max_size=1)
    await database.connect()

    def private(query: bool) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            async with connection(database) as conn:
                if query:
                    await conn.fetchval("SELECT 1")

        return call

    def public(query: bool) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            held = database.connection()
            async with asyncio.timeout(ACQUIRE_TIMEOUT_SECONDS):
                await held.__aenter__()
            try:
                conn = held.raw_connection
                if query:
                    await conn.fetchval("SELECT 1")
            finally:
                await held.__aexit__(None, None, None)

        return call

    variants = {
        "private, acquire + release": private(False),
        "public, acquire + release": public(False),
        "private, acquire + SELECT 1 + release": private(True),
        "public, acquire + SELECT 1 + release": public(True),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    try:
        for _ in range(runs):
            for name, call in variants.items():
                samples[name].append(await _per_call(call, calls))
    finally:
        await database.disconnect()
        await drop(db)
    print(f"{calls} calls x {runs} runs, medians per call")
    print("| variant | client CPU µs | wall µs |")
    print("|---|---:|---:|")
    for name, values in samples.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        print(f"| {name} | {cpu:.1f} | {wall:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.poolapi",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server", default=LOCAL_SERVER_URL, help="admin URL (%(default)s)")
    parser.add_argument("--calls", type=int, default=3000, help="calls per run (%(default)s)")
    parser.add_argument("--runs", type=int, default=7, help="runs per variant (%(default)s)")
    args = parser.parse_args()
    asyncio.run(measure(args.server, args.calls, args.runs))


if __name__ == "__main__":
    main()
