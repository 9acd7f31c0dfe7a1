"""Grow the audit log before measuring: synthetic events shaped like production's, by COPY.

A fresh `audit_events` has small indexes that sit in `shared_buffers`; a production log
does not. `grow` loads `events` events into the benchmark's database as the owner role
(binary COPY, `asyncpg.copy_records_to_table`), in time order, with every index in place,
so the indexes grow (and split) the way they do under traffic rather than being built
packed (`indexes="rebuild"` drops them first and builds them after: faster, but about
1.4 times smaller than grown ones at 2,000,000 events). The shape is the log after issue 15
(one event per request):

- scopes: `events // 1000` of them (20 to 2,000), half `org:<id>` and half `user:<sub>`,
  sizes skewed (a few large organisations, many small ones), none of them a scope the
  load uses, so no chain the load appends to is touched (their chains are not verified:
  `prev_hash` is random, `hash` is 32 random bytes, `audit_chain_heads` is left alone);
- per scope 1 to 30 users with a few sessions each (sub, client id, session id, token id,
  source IP, user agent), and 20 to 3,000 patients;
- actions: 35% `patient.searched` (crud E, no `patient_id`; `detail` = filters, returned,
  next_page, patient_ids: half are the unfiltered listing, 20 ids a page, the first page
  most often; the rest filtered, 0 to 5 ids), 35% `patient.read` (crud R, `patient_id`,
  `{"via": "get"}`), 8% `patient.created`, 10% `patient.updated`, 10% `user.signed_in`,
  2% `access.denied` (outcome denied);
- `recorded_at` uniform over the last `months` months, `seq` from `audit_events_seq`
  (taken in blocks, so the sequence stays ahead of every row), a unique `request_id` each.

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

    python -m bench.auditgrow --events 200000 [--indexes rebuild]   (a scratch database)
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime as dt
import ipaddress
import itertools
import random
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import psutil  # type: ignore[import-untyped]

from app.core.db import asyncpg_dsn
from bench.servers import process_cpu

COLUMNS = (
    "seq",
    "id",
    "occurred_at",
    "recorded_at",
    "scope",
    "actor",
    "client_id",
    "session_id",
    "token_id",
    "source_ip",
    "user_agent",
    "action",
    "crud",
    "outcome",
    "outcome_reason",
    "entity_type",
    "entity_id",
    "patient_id",
    "request_id",
    "detail",
    "prev_hash",
    "hash",
)
LINK_TABLE = "audit_event_patients"
# The link table's known shapes (migration 0008 as it evolves): a row per patient and event,
# or a row per event with the ids in an array.
LINK_SHAPES = {
    "patient_id": ("patient_id", "seq", "recorded_at"),
    "patient_ids": ("seq", "recorded_at", "patient_ids"),
}
# (action, crud, weight): one event per request.
MIX = (
    ("patient.searched", "E", 35),
    ("patient.read", "R", 35),
    ("patient.created", "C", 8),
    ("patient.updated", "U", 10),
    ("user.signed_in", "E", 10),
    ("access.denied", "R", 2),
)
PAGE = 20
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36",
)
FIELDS = ("given_name", "family_name", "birth_date", "gender", "phone", "email", "address")
SEARCH_FILTERS: tuple[tuple[list[str], int], ...] = (
    ([], 50),
    (["name"], 30),
    (["birth_date"], 10),
    (["identifier"], 5),
    (["name", "birth_date"], 5),
)
AMR = ('{"amr": ["pwd"]}', '{"amr": ["pwd", "mfa"]}', '{"amr": []}', '{"amr": ["fed"]}')
CREATED = tuple(
    orjson.dumps({"fields": sorted(FIELDS[:n] + FIELDS[-1:])}).decode() for n in range(3, 7)
)
UPDATED = tuple(
    orjson.dumps({"fields": sorted(fields), "version": version}).decode()
    for fields in (["phone"], ["address"], ["email", "phone"], ["family_name"], ["email"])
    for version in (2, 3, 5)
)
_UUID_MASK = ~((0xF << 76) | (0x3 << 62))
_UUID_V4 = (0x4 << 76) | (0x2 << 62)
DENIED = (
    ("/api/patients", "R", "the token lacks read:patients", "GET"),
    ("/api/patients", "C", "the token lacks create:patients", "POST"),
    ("/api/patients/{id}", "U", "the token lacks update:patients", "PATCH"),
    ("/api/patients/{id}", "D", "the token lacks delete:patients", "DELETE"),
    ("/api/audit-events", "R", "the token lacks read:audit", "GET"),
)


def _alnum(rng: random.Random, size: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rng.choices(alphabet, k=size))


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _public_ip(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return f"2a02:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"
    first = rng.choice((31, 46, 62, 77, 81, 84, 90, 93, 109, 145, 176, 185, 188, 212, 217))
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


@dataclass(frozen=True, slots=True)
class _Session:
    actor: str
    client_id: str
    session_id: str
    token_id: str
    source_ip: int  # asyncpg's inet encoder is 8x faster with an int than with text
    user_agent: str


@dataclass(slots=True)
class _Scope:
    name: str
    sessions: list[_Session]
    patient_texts: list[str]  # asyncpg parses uuid text in C, faster than from uuid.UUID


def make_scopes(count: int, rng: random.Random, exclude: Collection[str] = ()) -> list[_Scope]:
    """`count` scopes with their users' sessions and their patients, none in `exclude`."""
    clients = [_alnum(rng, 32) for _ in range(2)]
    scopes: list[_Scope] = []
    names: set[str] = set(exclude)
    while len(scopes) < count:
        sub = f"auth0|{rng.getrandbits(96):024x}"
        name = f"org:org_{_alnum(rng, 16)}" if len(scopes) % 2 == 0 else f"user:{sub}"
        if name in names:
            continue
        names.add(name)
        users = [sub] if name.startswith("user:") else [
            f"auth0|{rng.getrandbits(96):024x}" for _ in range(rng.randint(1, 30))
        ]  # fmt: skip
        sessions = [
            _Session(
                user,
                clients[0] if rng.random() < 0.85 else clients[1],
                _alnum(rng, 32),
                _alnum(rng, 32),
                int(ipaddress.ip_address(_public_ip(rng))),
                rng.choice(USER_AGENTS),
            )
            for user in users
            for _ in range(rng.randint(1, 4))
        ]
        patients = [str(_uuid(rng)) for _ in range(rng.randint(20, 3000))]
        scopes.append(_Scope(name, sessions, patients))
    return scopes


class Traffic:
    """The synthetic events, in time order: `records(seqs, times, links)` yields COPY records
    (in `COLUMNS` order) and appends to `links` one `(patient_id, seq, recorded_at)` per
    patient an event names."""

    def __init__(self, scopes: Sequence[_Scope], rng: random.Random) -> None:
        self.scopes = scopes
        self.rng = rng
        weights = [rng.paretovariate(1.2) for _ in scopes]  # a few large, many small
        self._scope_cum = list(itertools.accumulate(weights))
        self._action_cum = list(itertools.accumulate(w for _, _, w in MIX))
        self._filter_cum = list(itertools.accumulate(w for _, w in SEARCH_FILTERS))
        self._lag = [dt.timedelta(microseconds=rng.randrange(500, 20_000)) for _ in range(64)]

    def _event_id(self) -> str:
        """A random version-4 UUID, as text (asyncpg parses it in C)."""
        bits = self.rng.getrandbits(128) & _UUID_MASK | _UUID_V4
        return f"{bits:032x}"

    def records(
        self,
        seqs: Sequence[int],
        times: Sequence[dt.datetime],
        links: list[tuple[Any, ...]],
    ) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        count = len(seqs)
        scope_at = rng.choices(self.scopes, cum_weights=self._scope_cum, k=count)
        what_at = rng.choices(MIX, cum_weights=self._action_cum, k=count)
        lags = rng.choices(self._lag, k=count)
        for n in range(count):
            seq, recorded, scope = seqs[n], times[n], scope_at[n]
            action, crud, _ = what_at[n]
            s = scope.sessions[int(rng.random() * len(scope.sessions))]
            outcome, reason, entity_type, entity_id = "success", None, "Patient", None
            patient: str | None = None
            if action == "patient.searched":
                detail = self._search(scope, links, seq, recorded)
            elif action == "user.signed_in":
                entity_type, entity_id, detail = "user", s.actor, AMR[n % len(AMR)]
            elif action == "access.denied":
                route, crud, reason, method = DENIED[int(rng.random() * len(DENIED))]
                outcome, entity_type, entity_id = "denied", "route", route
                if "{id}" in route:
                    patient = scope.patient_texts[int(rng.random() * len(scope.patient_texts))]
                detail = f'{{"method": "{method}", "status": 403, "problem": "forbidden"}}'
            else:
                patient = scope.patient_texts[int(rng.random() * len(scope.patient_texts))]
                entity_id = patient
                if action == "patient.read":
                    detail = '{"via": "get"}'
                elif action == "patient.created":
                    detail = CREATED[n % len(CREATED)]
                else:
                    detail = UPDATED[n % len(UPDATED)]
            if patient is not None:
                links.append((patient, seq, recorded))
            yield (
                seq,
                self._event_id(),
                recorded - lags[n],
                recorded,
                scope.name,
                s.actor,
                s.client_id,
                s.session_id,
                s.token_id,
                s.source_ip,
                s.user_agent,
                action,
                crud,
                outcome,
                reason,
                entity_type,
                entity_id,
                patient,
                f"{rng.getrandbits(128):032x}",
                detail,
                rng.randbytes(32),
                rng.randbytes(32),
            )

    def _search(
        self, scope: _Scope, links: list[tuple[Any, ...]], seq: int, recorded: dt.datetime
    ) -> str:
        rng = self.rng
        filters = SEARCH_FILTERS[
            bisect.bisect(self._filter_cum, rng.random() * self._filter_cum[-1])
        ][0]
        texts = scope.patient_texts
        count = len(texts)
        if not filters:  # the listing, newest first: the first page most often
            pages = (count + PAGE - 1) // PAGE
            page = 0 if rng.random() < 0.6 or pages == 1 else 1 + int(rng.random() * (pages - 1))
            shown = texts[page * PAGE : page * PAGE + PAGE]
            next_page = page > 0
        else:
            wanted = (0, 1, 1, 1, 2, 3, 5)[int(rng.random() * 7)]
            shown = list(dict.fromkeys(texts[int(rng.random() * count)] for _ in range(wanted)))
            next_page = False
        links.extend(zip(shown, itertools.repeat(seq), itertools.repeat(recorded)))
        return orjson.dumps(
            {"filters": filters, "returned": len(shown), "next_page": next_page,
             "patient_ids": shown}
        ).decode()  # fmt: skip


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
        f"{LINK_TABLE} has columns {sorted(columns)}: bench/auditgrow.py knows "
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
    """Load `events` synthetic events (module docstring) as the owner; see `Grown`.

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


def main(argv: Sequence[str] | None = None) -> int:
    """Grow a throwaway database's audit log and print how long it took and its size."""
    from bench.__main__ import check_loopback
    from devkit.db import LOCAL_SERVER_URL, drop, provision

    parser = argparse.ArgumentParser(prog="python -m bench.auditgrow", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--indexes", choices=("grow", "rebuild"), default="grow")
    parser.add_argument("--admin-url", default=LOCAL_SERVER_URL)
    args = parser.parse_args(argv)
    check_loopback(args.admin_url)

    def log(message: str) -> None:
        print(f"[auditgrow {time.strftime('%H:%M:%S')}] {message}", flush=True)

    async def run() -> None:
        db = await provision(args.admin_url, f"bench_grow_{uuid.uuid4().hex[:6]}")
        try:
            grown = await grow(db.owner_url, args.events, indexes=args.indexes, log=log)
            print(grown.text(), flush=True)
        finally:
            await drop(db)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
