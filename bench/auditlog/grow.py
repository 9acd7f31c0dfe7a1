"""Grow the audit log before measuring: synthetic events (`bench.auditlog.traffic`), by COPY.

A fresh `audit_events` has small indexes that sit in `shared_buffers`; a production log
does not. `grow` loads `events` events into the benchmark's database as the owner role
(binary COPY, `asyncpg.copy_records_to_table`), in time order, with every index in place,
so the indexes grow (and split) the way they do under traffic rather than being built
packed (`indexes="rebuild"` drops them first and builds them after: faster, but about
1.4 times smaller than grown ones at 2,000,000 events). There are `events // 1000` scopes
(20 to 2,000); `recorded_at` is uniform over the last `months` months, `seq` comes from
`audit_events_seq` (taken in blocks, so the sequence stays ahead of every row).

Months without a partition get one first (as `audit_events_ensure_partitions` makes them),
so rows land in monthly partitions, not in the default one. When the database has the link
table `audit_event_patients` (migration 0008), it gets what the append functions write for
these events, in whichever of the shapes in `LINK_SHAPES` the table has (read at run time):
one `(patient_id, seq, recorded_at)` row per patient an event names, or one `(seq,
recorded_at, patient_ids)` row per event that names any; before that migration there is
nothing to fill. Then `VACUUM (ANALYZE)` (so autovacuum does not start during the
measurements) and a `CHECKPOINT` when the role may.

On two busy cores 2,000,000 events took 5 minutes: 110 s of CPU in this process (making
and encoding the rows), 215 s in Postgres (mostly the eight indexes, row by row).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]

from app.core.db import asyncpg_dsn
from bench.auditlog.tables import LINK_SHAPES, LINK_TABLE, LogSize, link_rows, link_shape, log_size
from bench.auditlog.traffic import COLUMNS, Traffic, make_scopes
from bench.kit.servers import process_cpu


async def _drop_indexes(conn: asyncpg.Connection, link: bool) -> list[str]:
    """Drop the audit log's secondary indexes (and the link table's indexes); return the
    statements that make them again, as the migrations made them."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 'audit_events'::regclass AND NOT i.indisprimary"
    )
    again = []
    for name, definition in rows:  # ON ONLY would index the parent alone
        again.append(definition.replace(" ON ONLY ", " ON "))
        await conn.execute(f'DROP INDEX "{name}"')
    if link:
        for name, definition, constraint, constraint_def in await conn.fetch(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), k.conname, "
            "pg_get_constraintdef(k.oid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid "
            "AND k.conrelid = i.indrelid WHERE i.indrelid = $1::regclass",
            LINK_TABLE,
        ):
            if constraint:
                again.append(
                    f'ALTER TABLE {LINK_TABLE} ADD CONSTRAINT "{constraint}" {constraint_def}'
                )
                await conn.execute(f'ALTER TABLE {LINK_TABLE} DROP CONSTRAINT "{constraint}"')
            else:
                again.append(definition)
                await conn.execute(f'DROP INDEX "{name}"')
    return again


def _cpu(pids: Sequence[int]) -> float:
    """CPU seconds of these Postgres backends; 0 when they are not on this machine."""
    try:
        return sum(process_cpu(pid) for pid in pids)
    except (psutil.Error, OSError):
        return 0.0


def _month(day: dt.date) -> dt.date:
    return day.replace(day=1)


def _next_month(day: dt.date) -> dt.date:
    return (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)


async def ensure_months(conn: asyncpg.Connection, since: dt.date) -> int:
    """Monthly partitions from `since`'s month to this one, where missing, as
    `audit_events_ensure_partitions` makes them (skipped when the default partition already
    holds rows of that month). Returns how many were created."""
    created = 0
    month, last = _month(since), _month(dt.datetime.now(dt.UTC).date())
    while month <= last:
        name = f"audit_events_{month:%Y_%m}"
        end = _next_month(month)
        missing = await conn.fetchval("SELECT to_regclass($1) IS NULL", name)
        taken = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM audit_events_default "
            "WHERE recorded_at >= $1 AND recorded_at < $2)",
            dt.datetime.combine(month, dt.time(), dt.UTC),
            dt.datetime.combine(end, dt.time(), dt.UTC),
        )
        if missing and not taken:
            await conn.execute(
                f'CREATE TABLE "{name}" PARTITION OF audit_events '
                f"FOR VALUES FROM ('{month}') TO ('{end}')"
            )
            await conn.execute("SELECT audit_events_protect_partition($1::regclass)", name)
            created += 1
        month = end
    return created


@dataclass(frozen=True)
class Grown:
    events: int
    link_rows: int
    scopes: int
    partitions_created: int
    seconds: float
    size: LogSize
    client_cpu_s: float = 0.0  # this process, while it grew the log
    backend_cpu_s: float = 0.0  # the COPY backends (0 when their CPU cannot be read)

    def text(self) -> str:
        cpu = (
            f", {self.client_cpu_s:.0f} s of CPU here and {self.backend_cpu_s:.0f} s in Postgres"
            if self.backend_cpu_s
            else ""
        )
        return (
            f"grew the audit log by {self.events:,} events ({self.link_rows:,} {LINK_TABLE} rows) "
            f"in {self.scopes:,} scopes in {self.seconds:.0f} s{cpu}; it holds "
            f"{self.size.text()}"
        )


async def grow(
    owner_url: str,
    events: int,
    *,
    exclude_scopes: Collection[str] = (),
    months: int = 6,
    seed: int = 15,
    chunk: int = 50_000,
    streams: int = 2,
    indexes: str = "grow",
    log: Callable[[str], None] | None = None,
) -> Grown:
    """Load `events` synthetic events (`bench.auditlog.traffic`) as the owner; see `Grown`.

    `streams` COPY connections take chunks of `chunk` events in time order, so Postgres
    works on two cores while this process makes the next records (the time goes to the
    eight indexes, each row maintaining them as the service's inserts do).
    """
    started, client_cpu = time.monotonic(), time.process_time()
    rng = random.Random(seed)
    scopes = make_scopes(max(20, min(2_000, events // 1_000)), rng, exclude_scopes)
    traffic = Traffic(scopes, rng)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    span = dt.timedelta(days=30.5 * months)
    chunks = max(1, -(-events // chunk))
    claimed = 0
    claim_lock = asyncio.Lock()
    loaded = links_total = 0

    conn = await asyncpg.connect(asyncpg_dsn(owner_url))
    try:
        partitions = await ensure_months(conn, (now - span).date())
        shape = await link_shape(conn)
        again = await _drop_indexes(conn, shape is not None) if indexes == "rebuild" else []

        async def stream(own: asyncpg.Connection) -> None:
            nonlocal claimed, loaded, links_total
            while True:
                async with claim_lock:  # chunks and their seq numbers both in time order
                    if claimed == chunks:
                        return
                    k = claimed
                    claimed += 1
                    count = events * (k + 1) // chunks - events * k // chunks
                    seqs = sorted(
                        r[0]
                        for r in await own.fetch(
                            "SELECT nextval('audit_events_seq') FROM generate_series(1, $1)",
                            count,
                        )
                    )
                # This chunk's slice of the months, uniform within it.
                begin = now - span + span * k / chunks
                width = (span / chunks).total_seconds()
                times = [begin + dt.timedelta(seconds=x * width)
                         for x in sorted(rng.random() for _ in range(count))]  # fmt: skip
                links: list[tuple[Any, ...]] = []
                records = traffic.records(seqs, times, links)
                await own.copy_records_to_table("audit_events", records=records, columns=COLUMNS)
                if shape and links:
                    rows = link_rows(shape, links)
                    await own.copy_records_to_table(
                        LINK_TABLE, records=rows, columns=LINK_SHAPES[shape]
                    )
                    links_total += len(rows)
                loaded += count
                if log and (k + 1) % max(1, chunks // 10) == 0:
                    log(f"  audit log: {loaded:,} of {events:,} events loaded")

        others = [await asyncpg.connect(asyncpg_dsn(owner_url)) for _ in range(streams - 1)]
        pids = [await c.fetchval("SELECT pg_backend_pid()") for c in [conn, *others]]
        backend_cpu = _cpu(pids)
        try:
            await asyncio.gather(*(stream(c) for c in [conn, *others]))
        finally:
            backend_cpu = _cpu(pids) - backend_cpu
            for other in others:
                await other.close()
        vacuum_cpu = _cpu(pids[:1])
        if again:
            if log:
                log(f"  audit log: building its {len(again)} indexes")
            await conn.execute("SET maintenance_work_mem = '256MB'")
            for ddl in again:
                await conn.execute(ddl)
        await conn.execute("VACUUM (ANALYZE) audit_events")
        if shape:
            await conn.execute(f"VACUUM (ANALYZE) {LINK_TABLE}")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")  # so the measurements do not pay for the load
        backend_cpu += _cpu(pids[:1]) - vacuum_cpu  # the checkpointer's work is not counted
        size = await log_size(conn)
    finally:
        await conn.close()
    return Grown(
        events,
        links_total,
        len(scopes),
        partitions,
        time.monotonic() - started,
        size,
        time.process_time() - client_cpu,
        backend_cpu,
    )
