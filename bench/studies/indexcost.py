"""What each index on the audit log costs per insert, on a grown log.

    python -m bench.studies.indexcost [--events 500000] [--batch 50] [--calls 40] [--rounds 7]

Provisions a throwaway database (`devkit.db.provision`, dropped at the end), grows its
audit log by `--events` synthetic events (`bench.auditlog`, as `python -m bench` does),
then appends events the way the service does: through `audit_events_append_batch`
(`app.audit.batcher.record_many`, the group-commit path of reads), each call carrying
`--batch` requests of one event each, in as many scopes (the group commit sends what the
connections queued), in the traffic mix the log was grown with (mostly `patient.searched`
with its page of patient ids and `patient.read`), on one connection, owner role. One event
per call (`--batch 1`) is the unbatched case; its fixed cost per call (the function, its
locks, the chain heads: about 0.5 to 1 ms of backend CPU here) then drowns the indexes.

Each measurement is one transaction that is rolled back: drop the indexes of the variant
(none, one of the non-primary-key indexes of `audit_events`, all of them at once, or one of
the link table's), make 2 unmeasured calls, then `--calls` measured ones, and read the
Postgres backend's CPU time (`/proc/<pid>/schedstat`, nanoseconds) and the wall time per
event. No commit, so no WAL flush: what is left is the statement's own work. Every
measurement appends in scopes of its own, so the rolled-back rows of earlier ones never sit
where its rows go, and a `VACUUM` after every round clears the rounds' dead rows. The
variants are interleaved within a round (a different one first each round); the table
shows medians over `--rounds` rounds: per index, its definition, its size (over all
partitions), the cost per insert with every index and without that one, and the
difference (the median of the rounds' own differences). The baseline's spread over the
rounds says how much of a difference is noise. It prints figures; it judges nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from app.audit.batcher import record_many
from app.audit.events import Actor, Event
from app.core.db import asyncpg_dsn
from bench.auditlog.grow import grow
from bench.auditlog.tables import LINK_TABLE, has_link_table, log_size
from bench.auditlog.traffic import MIX
from bench.kit.loopback import check_loopback
from bench.kit.servers import process_cpu
from devkit.db import LOCAL_SERVER_URL, drop, provision

WARM_CALLS = 2


@dataclass(frozen=True)
class Variant:
    label: str
    definition: str
    size_bytes: int | None
    drops: tuple[str, ...]  # DDL run inside the measured (rolled back) transaction


@dataclass
class Figures:
    cpu_us: list[float]
    wall_us: list[float]

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_us)

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_us)


async def variants(conn: asyncpg.Connection) -> list[Variant]:
    rows = await conn.fetch(
        """
        SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition,
            (SELECT coalesce(sum(pg_relation_size(t.relid)), 0)::bigint
             FROM pg_partition_tree(i.indexrelid) AS t WHERE t.isleaf) AS size
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'audit_events'::regclass AND NOT i.indisprimary
        ORDER BY c.relname
        """
    )
    primary = await conn.fetchrow(
        """
        SELECT pg_get_indexdef(i.indexrelid) AS definition,
            (SELECT coalesce(sum(pg_relation_size(t.relid)), 0)::bigint
             FROM pg_partition_tree(i.indexrelid) AS t WHERE t.isleaf) AS size
        FROM pg_index i WHERE i.indrelid = 'audit_events'::regclass AND i.indisprimary
        """
    )
    found = [
        Variant(
            "all indexes",
            f"(baseline; primary key kept throughout: {primary['definition']})"
            if primary
            else "(baseline)",
            primary["size"] if primary else None,
            (),
        )
    ]
    found += [
        Variant(r["name"], r["definition"], r["size"], (f'DROP INDEX "{r["name"]}"',)) for r in rows
    ]
    if rows:
        found.append(
            Variant(
                "every non-PK index of audit_events",
                "(all of the above dropped at once)",
                sum(r["size"] for r in rows),
                tuple(f'DROP INDEX "{r["name"]}"' for r in rows),
            )
        )
    if await has_link_table(conn):
        for r in await conn.fetch(
            """
            SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition,
                pg_relation_size(i.indexrelid) AS size, k.conname AS constraint_name
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid
            WHERE i.indrelid = $1::regclass ORDER BY c.relname
            """,
            LINK_TABLE,
        ):
            drop = (
                f'ALTER TABLE {LINK_TABLE} DROP CONSTRAINT "{r["constraint_name"]}"'
                if r["constraint_name"]
                else f'DROP INDEX "{r["name"]}"'
            )
            found.append(Variant(f"{r['name']} (link table)", r["definition"], r["size"], (drop,)))
    return found


class Requests:
    """One event per request in the grown log's mix, each with a fresh request id."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.patients = [uuid.UUID(int=self.rng.getrandbits(128), version=4) for _ in range(5000)]
        self.weights = [w for _, _, w in MIX]

    def make(self, count: int, tag: int) -> list[tuple[Actor, list[Event]]]:
        """`count` requests, each in a scope of its own named after `tag`."""
        rng = self.rng
        made = []
        for n in range(count):
            scope = f"org:indexcost-{tag}-{n}"
            actor = Actor(
                scope,
                f"auth0|{rng.getrandbits(96):024x}",
                "indexcost-spa",
                uuid.uuid4().hex,
                uuid.uuid4().hex,
                f"81.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                "Mozilla/5.0 (X11; Linux x86_64) indexcost",
                uuid.uuid4().hex,
            )
            action = rng.choices(MIX, weights=self.weights)[0][0]
            patient = rng.choice(self.patients)
            if action == "patient.searched":
                shown = rng.sample(self.patients, 20 if rng.random() < 0.5 else rng.randint(0, 5))
                event = Event(
                    action,
                    "E",
                    entity_type="Patient",
                    detail={
                        "filters": [],
                        "returned": len(shown),
                        "next_page": False,
                        "patient_ids": [str(p) for p in shown],
                    },
                )
            elif action == "user.signed_in":
                event = Event(
                    action, "E", entity_type="user", entity_id=actor.sub, detail={"amr": ["pwd"]}
                )
            elif action == "access.denied":
                event = Event(
                    action,
                    "R",
                    outcome="denied",
                    reason="the token lacks a permission",
                    entity_type="route",
                    entity_id="/api/patients/{id}",
                    patient_id=patient,
                    detail={"method": "GET", "status": 403},
                )
            else:
                read = action == "patient.read"
                event = Event(
                    action,
                    "R" if read else "C" if action == "patient.created" else "U",
                    entity_type="Patient",
                    entity_id=str(patient),
                    patient_id=patient,
                    detail={"via": "get"} if read else {"fields": ["phone"]},
                )
            made.append((actor, [event]))
        return made


async def measure_once(
    conn: asyncpg.Connection,
    pid: int,
    variant: Variant,
    calls: Sequence[Sequence[tuple[Actor, list[Event]]]],
) -> tuple[float, float]:
    """(backend CPU µs, wall µs) per event, in a transaction rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        for ddl in variant.drops:
            await conn.execute(ddl)
        for groups in calls[:WARM_CALLS]:
            await record_many(conn, groups)
        measured = calls[WARM_CALLS:]
        cpu, wall = process_cpu(pid), time.perf_counter()
        for groups in measured:
            await record_many(conn, groups)
        wall = time.perf_counter() - wall
        cpu = process_cpu(pid) - cpu
    finally:
        await tx.rollback()
    events = sum(len(groups) for groups in measured)
    return cpu / events * 1e6, wall / events * 1e6


def table(found: Sequence[Variant], figures: dict[str, Figures]) -> list[str]:
    base = figures[found[0].label]
    mib = 2**20
    lines = [
        "| index | definition | size MiB | with it: CPU / wall µs per insert "
        "| without it: CPU / wall µs | its cost: CPU / wall µs per insert (median of the "
        "rounds' differences) |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for v in found:
        f = figures[v.label]
        # The cost: the median of the rounds' own differences (a round's baseline and
        # variant ran close in time, so the machine's drift between rounds cancels).
        cpu_cost = statistics.median(b - x for b, x in zip(base.cpu_us, f.cpu_us, strict=True))
        wall_cost = statistics.median(b - x for b, x in zip(base.wall_us, f.wall_us, strict=True))
        size = f"{v.size_bytes / mib:,.1f}" if v.size_bytes is not None else ""
        if not v.drops:
            lines.append(
                f"| {v.label} | {v.definition} | {size} | {f.cpu:,.0f} / {f.wall:,.0f} | | |"
            )
            continue
        lines.append(
            f"| {v.label} | `{v.definition}` | {size} | {base.cpu:,.0f} / {base.wall:,.0f} "
            f"| {f.cpu:,.0f} / {f.wall:,.0f} | {cpu_cost:+,.0f} / {wall_cost:+,.0f} |"
        )
    return lines


async def run(args: argparse.Namespace) -> None:
    db = await provision(args.admin_url, f"bench_indexcost_{uuid.uuid4().hex[:6]}")
    try:
        print(
            f"throwaway database {db.name}; growing its audit log by {args.events:,} events",
            flush=True,
        )
        grown = await grow(db.owner_url, args.events, log=lambda m: print(m, flush=True))
        print(grown.text(), flush=True)
        conn = await asyncpg.connect(asyncpg_dsn(db.owner_url))
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            settings = await conn.fetch(
                "SELECT name, setting, unit FROM pg_settings WHERE name IN "
                "('shared_buffers', 'server_version', 'wal_level', 'full_page_writes')"
            )
            found = await variants(conn)
            link = f", {LINK_TABLE}" if await has_link_table(conn) else ""
            await conn.execute(f"VACUUM audit_events, audit_chain_heads{link}")
            requests = Requests()
            figures = {v.label: Figures([], []) for v in found}
            tags = itertools.count()
            for round_ in range(args.rounds):
                order = found[round_ % len(found) :] + found[: round_ % len(found)]
                for variant in order:
                    made = requests.make((WARM_CALLS + args.calls) * args.batch, next(tags))
                    calls = [made[i : i + args.batch] for i in range(0, len(made), args.batch)]
                    cpu, wall = await measure_once(conn, pid, variant, calls)
                    figures[variant.label].cpu_us.append(cpu)
                    figures[variant.label].wall_us.append(wall)
                # The rounds' rolled-back rows are dead weight in the heap and the indexes
                # (without this the log would grow by half its size over the rounds).
                await conn.execute(f"VACUUM audit_events, audit_chain_heads{link}")
                print(
                    f"  round {round_ + 1} of {args.rounds}: all indexes "
                    f"{figures[found[0].label].cpu_us[-1]:,.0f} µs CPU per insert",
                    flush=True,
                )
            size = await log_size(conn)
        finally:
            await conn.close()
        base = figures[found[0].label]
        print()
        print(
            f"Per insert (one event): `audit_events_append_batch` (`record_many`) calls of "
            f"{args.batch} requests' events in {args.batch} scopes, the grown log's mix, "
            f"{args.calls} calls ({args.calls * args.batch:,} events) per measurement in a "
            f"rolled-back transaction (no commit, no WAL flush), medians of {args.rounds} "
            f"rounds; all indexes: {min(base.cpu_us):,.0f} to {max(base.cpu_us):,.0f} µs "
            f"of CPU over the rounds (the noise). Log: {size.text()}. Server: "
            + ", ".join(f"{r['name']}={r['setting']}{r['unit'] or ''}" for r in settings)
            + ". CPU is the Postgres backend's; wall includes the client's encoding."
        )
        print()
        print("\n".join(table(found, figures)), flush=True)
    finally:
        await drop(db)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.indexcost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=500_000, help="grow the log first (500000)")
    parser.add_argument("--batch", type=int, default=50, help="requests per append call (50)")
    parser.add_argument("--calls", type=int, default=40, help="calls per measurement (40)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; medians (7)")
    parser.add_argument("--admin-url", default=LOCAL_SERVER_URL)
    args = parser.parse_args(argv)
    if min(args.batch, args.calls, args.rounds) < 1 or args.events < 0:
        parser.error("--batch, --calls and --rounds take a positive number")
    check_loopback(args.admin_url)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
