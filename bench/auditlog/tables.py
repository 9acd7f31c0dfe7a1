"""The audit log's tables as a run finds them: whether there is a link table and in which
shape, and how much the log holds (events and bytes)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.core.db import asyncpg_dsn

LINK_TABLE = "audit_event_patients"
# The link table's known shapes (migration 0008 as it evolves): a row per patient and event,
# or a row per event with the ids in an array.
LINK_SHAPES = {
    "patient_id": ("patient_id", "seq", "recorded_at"),
    "patient_ids": ("seq", "recorded_at", "patient_ids"),
}


@dataclass(frozen=True)
class LogSize:
    """What the audit log holds: events, and bytes over all partitions (heap with TOAST,
    free-space and visibility maps; indexes), and the same for the link table when there
    is one."""

    events: int
    heap_bytes: int
    index_bytes: int
    link_rows: int | None = None
    link_heap_bytes: int = 0
    link_index_bytes: int = 0

    def text(self) -> str:
        mib = 2**20
        line = (
            f"{self.events:,} events, audit_events {self.heap_bytes / mib:,.0f} MiB + "
            f"indexes {self.index_bytes / mib:,.0f} MiB"
        )
        if self.link_rows is not None:
            line += (
                f"; {LINK_TABLE} {self.link_rows:,} rows, {self.link_heap_bytes / mib:,.0f} "
                f"MiB + index {self.link_index_bytes / mib:,.0f} MiB"
            )
        return line


async def has_link_table(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", LINK_TABLE))


async def link_shape(conn: asyncpg.Connection) -> str | None:
    """Which of `LINK_SHAPES` the database's link table has; None without a link table.
    A shape this module does not know is an error, not a silently empty table."""
    if not await has_link_table(conn):
        return None
    columns = {
        r[0]
        for r in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass "
            "AND attnum > 0 AND NOT attisdropped",
            LINK_TABLE,
        )
    }
    for shape, wanted in LINK_SHAPES.items():
        if set(wanted) <= columns:
            return shape
    raise RuntimeError(
        f"{LINK_TABLE} has columns {sorted(columns)}: bench/auditlog/tables.py knows "
        f"{' or '.join(str(c) for c in LINK_SHAPES.values())}; teach it the new one"
    )


def link_rows(shape: str, links: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """COPY records for the link table from `(patient_id, seq, recorded_at)` triples in
    event order: as they are, or one `(seq, recorded_at, [patient ids])` per event."""
    if shape == "patient_id":
        return list(links)
    return [
        (seq, recorded, [patient for patient, _, _ in group])
        for (seq, recorded), group in itertools.groupby(links, key=lambda t: (t[1], t[2]))
    ]


async def log_size(conn: asyncpg.Connection) -> LogSize:
    """Exact counts (`count(*)`) and sizes, as any role that may read the tables."""
    events = await conn.fetchval("SELECT count(*) FROM audit_events")
    heap, indexes = await conn.fetchrow(
        "SELECT coalesce(sum(pg_table_size(relid)), 0)::bigint, "
        "coalesce(sum(pg_indexes_size(relid)), 0)::bigint "
        "FROM pg_partition_tree('audit_events') WHERE isleaf"
    )
    if not await has_link_table(conn):
        return LogSize(events, heap, indexes)
    rows = await conn.fetchval(f"SELECT count(*) FROM {LINK_TABLE}")
    link_heap, link_indexes = await conn.fetchrow(
        f"SELECT pg_table_size('{LINK_TABLE}'), pg_indexes_size('{LINK_TABLE}')"
    )
    return LogSize(events, heap, indexes, rows, link_heap, link_indexes)


def log_size_at(url: str) -> LogSize:
    """`log_size` on a connection of its own (synchronous, for the harness)."""

    async def measure() -> LogSize:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            return await log_size(conn)
        finally:
            await conn.close()

    return asyncio.run(measure())
