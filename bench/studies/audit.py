"""Audit log costs: write throughput with the hash chain on vs off, and filtered-page latency.

    python -m bench.studies.audit [--url postgresql://postgres@127.0.0.1:5432/postgres]
                                  [--events 1000000] [--writers 16] [--seconds 3] [--rounds 8]

Creates a throwaway database on the server (`devkit.db.provision`: migrated, with the app
role) and drops it at the end. In one run:

1. Loads `--events` synthetic events (owner role, SQL in chunks, indexed after) over the last
   60 days into monthly partitions: 200 scopes of which one holds a third of the events,
   1,000 actors, a realistic mix of actions and outcomes.
2. Writes: `--writers` concurrent tasks on the app role, each committing one event per
   transaction, as request handlers do. "off" is a plain INSERT of the same row with a
   random hash and no chain work; "on" is `record_event` (content digest in Python; the
   scope lock, seq numbers, link hashes, insert and head update in `audit_events_append`).
   Rounds run in back-to-back off/on pairs; medians of throughput and of the pair ratios.
   Spread over many scopes (the normal case), all in one scope (the worst case: every
   writer queues on one chain, each holding it until its commit is on disk), and 20 events
   per transaction (a page of search results: one `record_events` call, one INSERT).
3. Reads: `fetch_page` (what `GET /api/audit-events` runs) with a 31-day window and a page
   of 50 in the large scope, for each filter, with random values; median and p95.

Targets: the chain costs under 25% of write throughput; a filtered page < 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.audit.events import Actor, Event
from app.audit.query import AuditFilters, fetch_page
from app.audit.record import record_events
from app.core.db import asyncpg_dsn
from devkit.db import LOCAL_SERVER_URL, ProvisionedDatabase, drop, provision

BIG_SCOPE = "org:big"

LOAD = """
INSERT INTO audit_events (seq, id, occurred_at, recorded_at, scope, actor, client_id,
    session_id, source_ip, user_agent, action, crud, outcome, entity_type, entity_id,
    patient_id, request_id, detail, hash)
SELECT nextval('audit_events_seq'), gen_random_uuid(), t, t,
    CASE WHEN r1 < 0.33 THEN 'org:big' ELSE 'org:o' || (r1 * 1000)::int % 199 END,
    'auth0|user-' || (r2 * 1000)::int, 'spa-client', md5(g::text), '198.51.100.7',
    'Mozilla/5.0 (X11; Linux x86_64) bench', a.action, a.crud,
    CASE WHEN r3 < 0.01 THEN 'denied' WHEN r3 < 0.015 THEN 'failed' ELSE 'success' END,
    'patient', NULL, CASE WHEN a.action LIKE 'patient.%' THEN p.id END,
    'req-' || g, '{"via": "get"}', sha256(g::text::bytea)
FROM (
    SELECT g, random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5,
        now() - random() * interval '60 days' AS t
    FROM generate_series($1::bigint, $2::bigint) AS g
) AS s
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN s.r4 < 0.70 THEN 'patient.read' WHEN s.r4 < 0.80 THEN 'patient.searched'
        WHEN s.r4 < 0.85 THEN 'patient.updated' WHEN s.r4 < 0.88 THEN 'patient.created'
        WHEN s.r4 < 0.96 THEN 'user.signed_in' WHEN s.r4 < 0.98 THEN 'profile.updated'
        ELSE 'audit.read' END AS action,
        CASE WHEN s.r4 < 0.70 THEN 'R' WHEN s.r4 < 0.80 THEN 'E' WHEN s.r4 < 0.85 THEN 'U'
        WHEN s.r4 < 0.88 THEN 'C' WHEN s.r4 < 0.96 THEN 'E' WHEN s.r4 < 0.98 THEN 'U'
        ELSE 'R' END AS crud
) AS a
CROSS JOIN LATERAL (
    SELECT ('00000000-0000-4000-8000-'
            || lpad(((s.r5 * 1e9)::bigint % 100000)::text, 12, '0'))::uuid AS id
) AS p
"""

PLAIN_BATCH = """
INSERT INTO audit_events (id, occurred_at, recorded_at, scope, actor, client_id, session_id,
    token_id, source_ip, user_agent, request_id, action, crud, outcome, entity_type, entity_id,
    patient_id, detail, hash)
SELECT e.id, clock_timestamp(), clock_timestamp(), $1, $2, $3, $4, $5, $6, $7, $8, e.action,
    e.crud, e.outcome, e.entity_type, e.entity_id, e.patient_id, e.detail, e.hash
FROM unnest($9::uuid[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
            $15::uuid[], $16::jsonb[], $17::bytea[])
    AS e(id, action, crud, outcome, entity_type, entity_id, patient_id, detail, hash)
"""

PLAIN_INSERT = """
INSERT INTO audit_events (id, occurred_at, recorded_at, scope, actor, client_id, session_id,
    token_id, source_ip, user_agent, action, crud, outcome, entity_type, entity_id, patient_id,
    request_id, detail, hash)
VALUES ($1, clock_timestamp(), clock_timestamp(), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
    $12, $13, $14, $15, $16, $17)
"""


def patient_uuid(n: int) -> uuid.UUID:
    return uuid.UUID(f"00000000-0000-4000-8000-{n:012d}")


async def load(owner: asyncpg.Connection, events: int, chunk: int = 250_000) -> float:
    """Synthetic history over the last 60 days, in monthly partitions like production's."""
    today = datetime.now(UTC).date().replace(day=1)
    for back in (1, 2, 3):
        start = (today - timedelta(days=28 * back)).replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        name = f"audit_events_{start:%Y_%m}"
        await owner.execute(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF audit_events "
            f"FOR VALUES FROM ('{start}') TO ('{end}')"
        )
    started = time.perf_counter()
    # Index after loading (10x faster than maintaining them row by row); the same indexes.
    indexes = await owner.fetch(
        "SELECT indexname, indexdef FROM pg_indexes "
        "WHERE tablename = 'audit_events' AND indexname NOT LIKE '%pkey'"
    )
    for index in indexes:
        await owner.execute(f"DROP INDEX {index['indexname']}")
    await owner.execute("SELECT setseed(0.42)")
    for first in range(1, events + 1, chunk):
        await owner.execute(LOAD, first, min(first + chunk - 1, events))
        print(f"  loaded {min(first + chunk - 1, events):>9,} events", flush=True)
    for index in indexes:  # ON ONLY would index the parent alone, not its partitions
        await owner.execute(index["indexdef"].replace(" ON ONLY ", " ON "))
    await owner.execute("ANALYZE audit_events")
    await owner.execute("CHECKPOINT")  # so the write rounds do not pay for the load
    return time.perf_counter() - started


def event(rng: random.Random) -> Event:
    return Event(
        "patient.read",
        "R",
        entity_type="patient",
        entity_id=str(patient_uuid(rng.randrange(100_000))),
        patient_id=patient_uuid(rng.randrange(100_000)),
        detail={"via": "get"},
    )


def actor(rng: random.Random, scope: str) -> Actor:
    return Actor(
        scope=scope,
        sub=f"auth0|user-{rng.randrange(1000)}",
        client_id="spa-client",
        session_id=uuid.uuid4().hex,
        token_id=uuid.uuid4().hex,
        source_ip="198.51.100.7",
        user_agent="Mozilla/5.0 (X11; Linux x86_64) bench",
        request_id=uuid.uuid4().hex,
    )


async def write_chained(conn: asyncpg.Connection, who: Actor, what: list[Event]) -> None:
    async with conn.transaction():
        await record_events(conn, who, what)


async def write_plain(conn: asyncpg.Connection, who: Actor, what: list[Event]) -> None:
    actor_values = (who.sub, who.client_id, who.session_id, who.token_id, who.source_ip)
    async with conn.transaction():
        if len(what) == 1:
            event = what[0]
            await conn.execute(
                PLAIN_INSERT,
                uuid.uuid4(),
                who.scope,
                *actor_values,
                who.user_agent,
                event.action,
                event.crud,
                event.outcome,
                event.entity_type,
                event.entity_id,
                event.patient_id,
                who.request_id,
                '{"via": "get"}',
                os.urandom(32),
            )
            return
        await conn.execute(
            PLAIN_BATCH,
            who.scope,
            *actor_values,
            who.user_agent,
            who.request_id,
            [uuid.uuid4() for _ in what],
            [e.action for e in what],
            [e.crud for e in what],
            [e.outcome for e in what],
            [e.entity_type for e in what],
            [e.entity_id for e in what],
            [e.patient_id for e in what],
            ['{"via": "get"}' for _ in what],
            [os.urandom(32) for _ in what],
        )


Writer = Callable[[asyncpg.Connection, Actor, list[Event]], Awaitable[None]]


async def throughput(
    pool: asyncpg.Pool,
    write: Writer,
    scopes: list[str],
    writers: int,
    seconds: float,
    batch: int = 1,
) -> float:
    """Events committed per second by `writers` concurrent tasks over `seconds`."""
    deadline = time.perf_counter() + seconds
    counts = [0] * writers

    async def run(n: int) -> None:
        rng = random.Random(n)
        while time.perf_counter() < deadline:
            who, what = actor(rng, rng.choice(scopes)), [event(rng) for _ in range(batch)]
            async with pool.acquire() as conn:
                await write(conn, who, what)
            counts[n] += batch

    started = time.perf_counter()
    await asyncio.gather(*(run(n) for n in range(writers)))
    return sum(counts) / (time.perf_counter() - started)


async def compare_writes(
    pool: asyncpg.Pool,
    scopes: list[str],
    args: argparse.Namespace,
    batch: int = 1,
) -> tuple[float, float, float]:
    """Median events/s off and on, and the median on/off ratio of back-to-back pairs.

    Each pair runs off and on right after each other (in alternating order), so that load
    from elsewhere on the machine hits both sides of a pair alike.
    """
    off: list[float] = []
    on: list[float] = []
    for write in (write_chained, write_plain):  # warm up both paths
        await throughput(pool, write, scopes, args.writers, 1.0, batch)
    for n in range(args.rounds):
        order = (write_plain, write_chained) if n % 2 == 0 else (write_chained, write_plain)
        result = {
            write: await throughput(pool, write, scopes, args.writers, args.seconds, batch)
            for write in order
        }
        off.append(result[write_plain])
        on.append(result[write_chained])
    ratio = statistics.median(b / a for a, b in zip(off, on, strict=True))
    return statistics.median(off), statistics.median(on), ratio


async def page_latency(
    pool: asyncpg.Pool, make: Callable[[random.Random], dict[str, Any]], runs: int
) -> tuple[float, float, int]:
    """Median and p95 milliseconds of one filtered page (50 rows) and the mean row count."""
    rng = random.Random(1)
    until = datetime.now(UTC)
    samples: list[float] = []
    rows_total = 0
    async with pool.acquire() as conn:
        for _ in range(runs):
            end = until - timedelta(days=rng.random() * 29)
            filters = AuditFilters(BIG_SCOPE, end - timedelta(days=31), end, **make(rng))
            started = time.perf_counter()
            async with conn.transaction():  # as the endpoint runs it
                rows, _ = await fetch_page(conn, filters, limit=50)
            samples.append((time.perf_counter() - started) * 1000)
            rows_total += len(rows)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1], rows_total // runs


FILTERS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "window only": lambda r: {},
    "actor": lambda r: {"actor": f"auth0|user-{r.randrange(1000)}"},
    "action exact (patient.updated)": lambda r: {"action": "patient.updated"},
    "action prefix (patient.*)": lambda r: {"action": "patient.*"},
    "action prefix (profile.*)": lambda r: {"action": "profile.*"},
    "outcome=denied": lambda r: {"outcome": "denied"},
    "patient_id": lambda r: {"patient_id": patient_uuid(r.randrange(100_000))},
    "request_id": lambda r: {"request_id": f"req-{r.randrange(1, 1_000_000)}"},
    "actor + outcome=failed": lambda r: {
        "actor": f"auth0|user-{r.randrange(1000)}",
        "outcome": "failed",
    },
}


async def main(args: argparse.Namespace) -> None:
    db: ProvisionedDatabase = await provision(args.url)
    print(f"throwaway database {db.name}")
    try:
        owner = await asyncpg.connect(asyncpg_dsn(db.owner_url))
        settings = await owner.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('synchronous_commit', 'fsync', 'shared_buffers', 'max_connections')"
        )
        print("server:", ", ".join(f"{r['name']}={r['setting']}" for r in settings))
        print(f"\nloading {args.events:,} events ...")
        took = await load(owner, args.events)
        total = await owner.fetchval("SELECT count(*) FROM audit_events")
        big = await owner.fetchval("SELECT count(*) FROM audit_events WHERE scope = $1", BIG_SCOPE)
        print(f"  {total:,} events ({big:,} in {BIG_SCOPE}) in {took:.1f} s")
        # As the owner: since migrations/0009 the app role may only call the append
        # functions, and the unchained baseline inserts rows directly.
        pool = await asyncpg.create_pool(
            asyncpg_dsn(db.owner_url), min_size=args.writers, max_size=args.writers
        )

        print(
            f"\nwrites: {args.writers} writers, one event per transaction, {args.rounds} pairs "
            f"of {args.seconds:g} s rounds (off, on), medians"
        )
        many = [f"org:w{i}" for i in range(1000)]
        cases = (
            ("1,000 scopes", many, 1),
            ("one scope", ["org:hot"], 1),
            ("1,000 scopes, 20 events per transaction", many, 20),
        )
        for label, scopes, batch in cases:
            off, on, ratio = await compare_writes(pool, scopes, args, batch)
            print(f"  {label}")
            print(
                f"      chain off {off:8,.0f} ev/s   chain on {on:8,.0f} ev/s   "
                f"on/off {ratio:.2f}   chain cost {(1 - ratio) * 100:5.1f}%"
            )

        print(f"\nfiltered page (50 rows, 31-day window, scope {BIG_SCOPE}), {args.runs} runs each")
        everything: list[float] = []
        for label, make in FILTERS.items():
            median, p95, rows = await page_latency(pool, make, args.runs)
            everything.append(p95)
            print(f"  {label:<32} median {median:6.2f} ms   p95 {p95:6.2f} ms   rows {rows}")
        print(f"  worst p95 {max(everything):.2f} ms")
        await pool.close()
        await owner.close()
    finally:
        await drop(db)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.audit", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", default=os.environ.get("BENCH_DATABASE_URL", LOCAL_SERVER_URL))
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=200)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
