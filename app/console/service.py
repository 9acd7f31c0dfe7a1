"""The console's operations: the audit log's pages, one event with its place in the chain,
and a patient's access report, each recorded (through the process's `AuditWriter`, as the
API's reads are) before the page that shows it is sent. A read that cannot be recorded
fails instead of showing the data."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from databases import Database

from app.audit.batcher import AuditWriter
from app.audit.digests import digest_item, fetch_digests
from app.audit.events import Actor, Event
from app.audit.query import (
    AuditFilters,
    archived_months,
    fetch_event,
    fetch_page,
    fetch_patient_events,
)
from app.audit.signing import ScopeNames
from app.audit.trees import recent_checkpoints
from app.audit.verify import ChainReport, verify_chain
from app.console import events, repository
from app.console.search import route_of
from app.core.db import connection, transaction

REPORT_BATCH = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_END = datetime.max.replace(tzinfo=UTC)
DIGESTS_SHOWN = 10
CHECKPOINTS_SHOWN = 10
TOP_ACTORS = 10
FAMILIES_SHOWN = 6  # the largest action families get a colour each, the rest "other"


@dataclass(frozen=True, slots=True)
class ChainPlace:
    """Where an event sits in its scope's chain: the event before it, and whether that
    event's hash is the one this event names as `prev_hash`."""

    previous_seq: int | None
    linked: bool


async def log_page(
    database: Database,
    writer: AuditWriter,
    actor: Actor,
    filters: AuditFilters,
    *,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[asyncpg.Record], tuple[datetime, int] | None]:
    """A newest-first page of the log (the API's keyset), recorded as an `audit.read`."""
    async with transaction(database) as conn:
        rows, next_key = await fetch_page(conn, filters, limit=limit, after=after)
    await writer.record(actor, [events.log_viewed(filters, len(rows))])
    return rows, next_key


async def one_event(
    database: Database, writer: AuditWriter, actor: Actor, seq: int
) -> tuple[asyncpg.Record | None, ChainPlace | None]:
    """One event of the caller's scope and its place in the chain; None when there is none."""
    async with connection(database) as conn:
        row = await fetch_event(conn, actor.scope, seq)
        previous = await repository.previous_in_chain(conn, actor.scope, seq) if row else None
    patient = row["patient_id"] if row is not None else None
    await writer.record(actor, [events.event_viewed(seq, patient, row is not None)])
    if row is None:
        return None, None
    if previous is None:
        return row, ChainPlace(None, row["prev_hash"] is None)
    return row, ChainPlace(previous["seq"], bytes(previous["hash"]) == row["prev_hash"])


async def access_report(
    database: Database,
    writer: AuditWriter,
    actor: Actor,
    patient_id: uuid.UUID,
    *,
    after_seq: int,
    limit: int,
) -> tuple[list[asyncpg.Record], int | None, list[str]]:
    """A page of every event that named the patient, oldest first, recorded as a read; and
    the months archived out of the log, whose events the page cannot hold."""
    async with connection(database) as conn:
        rows, next_seq = await fetch_patient_events(
            conn, actor.scope, patient_id, after_seq=after_seq, limit=limit
        )
        archived = await archived_months(conn)
    event = events.report_viewed(patient_id, "console.access_report", len(rows))
    await writer.record(actor, [event])
    return rows, next_seq, archived


async def report_download(
    database: Database,
    writer: AuditWriter,
    actor: Actor,
    patient_id: uuid.UUID,
    view: str,
    encode: Callable[[Sequence[asyncpg.Record]], bytes],
    *,
    header: bytes = b"",
) -> AsyncIterator[bytes]:
    """The whole report, oldest first, as `encode` writes each batch of events. The download
    is recorded before this returns (so before its first byte is sent)."""
    await writer.record(actor, [events.report_viewed(patient_id, view, None)])

    async def chunks() -> AsyncIterator[bytes]:
        if header:
            yield header
        after = 0
        while True:
            async with connection(database) as conn:
                rows, next_seq = await fetch_patient_events(
                    conn, actor.scope, patient_id, after_seq=after, limit=REPORT_BATCH
                )
            if rows:
                yield encode(rows)
            if next_seq is None:
                return
            after = next_seq

    return chunks()


def by_day(rows: Sequence[asyncpg.Record]) -> list[tuple[date, list[dict[str, Any]]]]:
    """An access report's events by UTC day, each with the way it reached the patient."""
    days: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        entry = {"row": row, "route": route_of(row["action"], detail_of(row))}
        days[row["recorded_at"].astimezone(UTC).date()].append(entry)
    return sorted(days.items())


def detail_of(row: asyncpg.Record) -> dict[str, object]:
    """An event's stored `detail` as a mapping (it holds names and codes only)."""
    loaded = orjson.loads(row["detail"])
    return loaded if isinstance(loaded, dict) else {}


async def record_export(writer: AuditWriter, actor: Actor, filters: AuditFilters) -> None:
    """An export of the log starts only once it is recorded (`audit.exported`, as the API's)."""
    detail = {
        "view": "console.export",
        "format": "ndjson",
        "since": filters.since.isoformat(),
        "until": filters.until.isoformat(),
        "filters": filters.used(),
    }
    await writer.record(actor, [Event("audit.exported", "R", detail=detail)])


async def digests_download(
    database: Database, writer: AuditWriter, actor: Actor, names: ScopeNames | None
) -> AsyncIterator[bytes]:
    """Every signed digest, oldest first, one a line as the API shows them (with the caller's
    scope's name): the offline check's `--digests`. Recorded before the first byte."""
    detail = {"view": "console.digests"}
    await writer.record(actor, [Event("audit.read", "R", detail=detail)])

    async def lines() -> AsyncIterator[bytes]:
        after = None
        while True:
            async with connection(database) as conn:
                rows, after = await fetch_digests(
                    conn, _EPOCH, _END, after=after, limit=REPORT_BATCH
                )
            yield b"".join(orjson.dumps(digest_item(r, actor.scope, names)) + b"\n" for r in rows)
            if after is None:
                return

    return lines()


async def integrity(
    database: Database,
    writer: AuditWriter,
    actor: Actor,
    since: datetime,
    until: datetime,
) -> tuple[ChainReport, list[asyncpg.Record], list[asyncpg.Record]]:
    """The caller's scope's chain walked over [since, until) (recorded as `audit.verified`,
    as the API's verification is), the latest signed digests, and the latest checkpoints of
    its Merkle tree with the witnesses that cosigned each."""
    async with connection(database) as conn:
        report = await verify_chain(conn, actor.scope, since, until)
        digests = await repository.latest_digests(conn, DIGESTS_SHOWN)
        checkpoints = await recent_checkpoints(conn, actor.scope, CHECKPOINTS_SHOWN)
    detail = {
        "view": "console.integrity",
        "since": since.isoformat(),
        "until": until.isoformat(),
        "status": report.status,
        "count": report.count,
    }
    await writer.record(actor, [Event("audit.verified", "E", detail=detail)])
    return report, digests, checkpoints


@dataclass(frozen=True, slots=True)
class Activity:
    """The window's events per hour by action family, denied per hour, and top actors."""

    hours: list[datetime]
    by_family: dict[str, list[int]]
    denied: list[int]
    actors: list[tuple[str, int, int]]  # actor, disclosing events, patients named


def _hours(since: datetime, until: datetime) -> list[datetime]:
    hour = since.replace(minute=0, second=0, microsecond=0)
    found = []
    while hour < until:
        found.append(hour)
        hour += timedelta(hours=1)
    return found


async def activity(
    database: Database, writer: AuditWriter, actor: Actor, since: datetime, until: datetime
) -> Activity:
    """What the charts draw for the caller's scope, recorded as an `audit.read`."""
    async with connection(database) as conn:
        counts = await repository.hourly_counts(conn, actor.scope, since, until)
        top = await repository.top_actors(conn, actor.scope, since, until, TOP_ACTORS)
    detail = {"view": "console.activity", "since": since.isoformat(), "until": until.isoformat()}
    await writer.record(actor, [Event("audit.read", "R", detail=detail)])
    hours = _hours(since, until)
    index = {hour: i for i, hour in enumerate(hours)}
    totals: dict[str, int] = {}
    for row in counts:
        totals[row["family"]] = totals.get(row["family"], 0) + row["events"]
    ranked = sorted(totals, key=lambda family: (-totals[family], family))
    shown = ranked[:FAMILIES_SHOWN]
    by_family = {family: [0] * len(hours) for family in shown}
    if len(ranked) > FAMILIES_SHOWN:
        by_family["other"] = [0] * len(hours)
    denied = [0] * len(hours)
    for row in counts:
        i = index.get(row["hour"])
        if i is None:
            continue
        family = row["family"] if row["family"] in shown else "other"
        by_family[family][i] += row["events"]
        if row["outcome"] == "denied":
            denied[i] += row["events"]
    actors = [(row["actor"], row["events"], row["patients"]) for row in top]
    return Activity(hours, by_family, denied, actors)
