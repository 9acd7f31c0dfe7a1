"""The scopes' Merkle trees: what maintaining them costs per event, and proof latency.

    python -m bench.studies.merkle [--url postgresql://postgres@127.0.0.1:5432/postgres]
                                   [--events 2000000] [--appends 20000] [--proofs 500]

Creates a throwaway database on the server (`devkit.db.provision`) and drops it at the end.
In one run:

1. Loads `--events` synthetic events (the same history as bench.studies.audit: 200 scopes,
   one holding a third of them), heads set to each scope's last event.
2. Builds the trees of that history with `audit_trees_extend` by slices of 50,000, as
   `python -m app audit build-trees` does: events per second.
3. Appends `--appends` events one per transaction with `record_event` (the app role, as the
   service does; the append path does not touch the tree), timing each: µs per append.
   Then extends the trees over exactly those events, as the digest issuer does, timing the
   statement (one backend, on an otherwise idle server: its wall time is its CPU): µs of
   tree work per event, next to the µs of the append, same run.
4. Proofs in the large scope at its full size: `inclusion_proof` of random events and
   `consistency_proof` from random older sizes; median and p95.

Targets: tree maintenance well under the append's own cost (it runs off the append path,
once per digest interval); a proof < 5 ms at 2 million events.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import asyncpg

from app.audit.events import Actor, Event
from app.audit.record import record_event
from app.audit.trees import consistency_proof, extend_trees, inclusion_proof
from app.core.db import asyncpg_dsn
from bench.studies.audit import BIG_SCOPE, load
from devkit.db import LOCAL_SERVER_URL, ProvisionedDatabase, drop, provision

HEADS = """
INSERT INTO audit_chain_heads (scope, last_seq, last_hash, updated_at)
SELECT DISTINCT ON (scope) scope, seq, hash, recorded_at FROM audit_events
ORDER BY scope, seq DESC
ON CONFLICT (scope) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash,
    updated_at = excluded.updated_at
"""


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


async def _build(conn: asyncpg.Connection) -> tuple[int, float]:
    started, leaves = time.perf_counter(), 0
    watermark = await conn.fetchval("SELECT audit_events_watermark()")
    while True:
        async with conn.transaction():
            grown = await extend_trees(conn, watermark, 50_000)
        if not grown:
            break
        leaves = await conn.fetchval("SELECT coalesce(sum(size), 0)::bigint FROM audit_trees")
    return leaves, time.perf_counter() - started


async def _appends(pool: asyncpg.Pool, count: int) -> list[float]:
    actor = Actor(scope=BIG_SCOPE, sub="auth0|bench", client_id="spa", source_ip="203.0.113.9")
    timings = []
    async with pool.acquire() as conn:
        for n in range(count):
            started = time.perf_counter()
            async with conn.transaction():
                await record_event(conn, actor, Event("patient.read", "R", detail={"n": n}))
            timings.append(time.perf_counter() - started)
    return timings


async def _proofs(conn: asyncpg.Connection, count: int) -> tuple[list[float], list[float]]:
    size = await conn.fetchval("SELECT size FROM audit_trees WHERE scope = $1", BIG_SCOPE)
    ids = await conn.fetch(
        "SELECT id FROM audit_tree_leaves WHERE scope = $1 AND idx = ANY($2::bigint[])",
        BIG_SCOPE,
        [random.randrange(size) for _ in range(count)],
    )
    inclusion, consistency = [], []
    for row in ids:
        started = time.perf_counter()
        await inclusion_proof(conn, BIG_SCOPE, row["id"], size)
        inclusion.append(time.perf_counter() - started)
    for _ in range(count):
        started = time.perf_counter()
        await consistency_proof(conn, BIG_SCOPE, random.randrange(1, size), size)
        consistency.append(time.perf_counter() - started)
    return inclusion, consistency


async def main(args: argparse.Namespace) -> None:
    db: ProvisionedDatabase = await provision(args.url)
    try:
        owner = await asyncpg.connect(asyncpg_dsn(db.owner_url))
        pool = await asyncpg.create_pool(asyncpg_dsn(db.app_url), min_size=1, max_size=2)
        try:
            print(f"loading {args.events:,} events")
            await load(owner, args.events)
            await owner.execute(HEADS)
            leaves, seconds = await _build(owner)
            print(f"build-trees: {leaves:,} leaves in {seconds:.1f} s, {leaves / seconds:,.0f}/s")
            appends = await _appends(pool, args.appends)
            watermark = await owner.fetchval("SELECT audit_events_watermark()")
            started = time.perf_counter()
            async with owner.transaction():
                await extend_trees(owner, watermark)
            tree = time.perf_counter() - started
            print(
                f"append: median {statistics.median(appends) * 1e6:,.0f} µs per event; tree: "
                f"{tree / args.appends * 1e6:,.1f} µs of Postgres time per event (same run)"
            )
            await owner.execute(
                "INSERT INTO audit_checkpoints SELECT scope, size, sha256('bench'), 0, now(), '' "
                "FROM audit_trees"
            )  # the proofs look for a checkpoint of the size they prove
            inclusion, consistency = await _proofs(owner, args.proofs)
            for name, values in (("inclusion", inclusion), ("consistency", consistency)):
                print(
                    f"{name} proof at {leaves:,} events: median "
                    f"{statistics.median(values) * 1e3:.2f} ms, p95 {_p95(values) * 1e3:.2f} ms"
                )
        finally:
            await pool.close()
            await owner.close()
    finally:
        await drop(db)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=LOCAL_SERVER_URL, help="a superuser URL of the server")
    parser.add_argument("--events", type=int, default=2_000_000, help="history loaded")
    parser.add_argument("--appends", type=int, default=20_000, help="events appended, timed")
    parser.add_argument("--proofs", type=int, default=500, help="proofs of each kind, timed")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
