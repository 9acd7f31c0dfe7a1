"""Sealing closed months of the audit log into archives, then detaching them.

    python -m app audit archive --before YYYY-MM --to DIR [--drop] [--dry-run]

As the migrations owner (MIGRATIONS_DATABASE_URL: detaching a partition is the owner's).
For each monthly partition before `--before` (and before the current month), oldest first:
every event must be in its scope's Merkle tree under a signed checkpoint (else it stops:
run `python -m app audit digest` first); it writes the month's events and its manifest
(app/audit/sealed.py has the format: each scope's tree size at the month's end and the
consistency proof to its latest checkpoint), reads them back and checks each event's hash,
its leaf in the stored tree and the proof, and only then detaches the partition (`--drop`:
drops it), recording the month in `audit_archived_months` in the same transaction (the
access report names the months it no longer holds). The tree keeps every node, so
inclusion proofs of archived events still hold.

Memory stays flat whatever the month's size: the partition is read a page of `_PAGE`
events at a time in `seq` order (keyset: `seq > last`, on its primary key), each page
written and hashed as it goes, and read back in batches of `_BATCH`; what the manifest
needs is kept per scope, never per event. Pages rather than one server-side cursor: each
page is a short statement, so no snapshot is held open (holding back vacuum everywhere)
for the minutes a month of millions takes. The set read cannot change: the service's
appends record at the database's clock, so never into a closed month, and the month is
written, checked and detached in one transaction that first locks its partition SHARE ROW
EXCLUSIVE, so no INSERT, UPDATE or DELETE by any role reaches it until the detach commits,
nor does a second `archive` of it; reads go on.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import orjson

from app.audit.checkpoints import CheckpointInvalid
from app.audit.merkle import ProofInvalid, leaf_hash, verify_consistency
from app.audit.query import EVENT_COLUMNS, event_item
from app.audit.sealed import MONTH, ArchiveBroken, archive_names, read_event
from app.audit.trees import consistency_proof, latest_checkpoint, tree_root
from app.core.progress import Progress

_PARTITION = re.compile(r"audit_events_([0-9]{4})_([0-9]{2})")
_PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'audit_events'::regclass ORDER BY c.relname
"""
_LEAVES = "SELECT seq, scope, idx FROM audit_tree_leaves WHERE seq = ANY($1::bigint[])"
_STORED_LEAVES = """
SELECT l.seq, l.scope, n.hash FROM audit_tree_leaves l
JOIN audit_tree_nodes n ON n.scope = l.scope AND n.level = 0 AND n.idx = l.idx
WHERE l.seq = ANY($1::bigint[])
"""
_PAGE = 5_000  # events read per query as the month is written
_BATCH = 5_000  # events read back per query of their stored leaves
_FIRST = -(2**63)  # below every seq
_RECORD = (
    "INSERT INTO audit_archived_months (month, events, sha256, dropped) VALUES ($1, $2, $3, $4)"
)
_SELECT = ", ".join(f"{c}::text AS {c}" if c == "detail" else c for c in EVENT_COLUMNS)
_Ends = dict[str, tuple[int, int, bytes]]  # scope: (first leaf, tree size, last hash)


class ArchiveRefused(Exception):
    """Nothing (more) was archived or detached; the message says why."""


@dataclass(frozen=True, slots=True)
class Month:
    partition: str
    month: str  # YYYY-MM
    events: int


def closed_months(names: list[str], before: str, today: date) -> list[str]:
    """The partitions of months before `before` and before the current month, oldest first."""
    current = f"{today:%Y-%m}"
    found = []
    for name in names:
        match = _PARTITION.fullmatch(name)
        if match is not None:
            month = f"{match[1]}-{match[2]}"
            if MONTH.fullmatch(month) and month < before and month < current:
                found.append(name)
    return sorted(found)


def _month(partition: str) -> str:
    match = _PARTITION.fullmatch(partition)
    assert match is not None
    return f"{match[1]}-{match[2]}"


async def plan(conn: asyncpg.Connection, before: str, today: date) -> list[Month]:
    names = [r["relname"] for r in await conn.fetch(_PARTITIONS)]
    months = []
    for partition in closed_months(names, before, today):
        count = await conn.fetchval(f'SELECT count(*) FROM "{partition}"')
        months.append(Month(partition, _month(partition), int(count)))
    return months


def _page_query(partition: str) -> str:
    return f'SELECT {_SELECT} FROM "{partition}" WHERE seq > $1 ORDER BY seq LIMIT $2'


async def _follow_leaves(conn: asyncpg.Connection, rows: list[asyncpg.Record], ends: _Ends) -> None:
    """Each event of a page is in its scope's tree; each scope's end moves to its last."""
    leaves = {r["seq"]: r for r in await conn.fetch(_LEAVES, [r["seq"] for r in rows])}
    for row in rows:
        leaf = leaves.get(row["seq"])
        if leaf is None or leaf["scope"] != row["scope"]:
            raise ArchiveRefused(
                f"seq {row['seq']} is not in its scope's tree yet: run `python -m app audit "
                "digest` (or build-trees) first"
            )
        first = ends.get(row["scope"], (leaf["idx"], 0, b""))[0]
        ends[row["scope"]] = (first, leaf["idx"] + 1, bytes(row["hash"]))


class _Hashed:
    """A file being written, and the SHA-256 of every byte written to it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


async def _write(
    conn: asyncpg.Connection, month: Month, path: Path, ends: _Ends
) -> tuple[int, str]:
    """The month's events into `path` (gzip NDJSON, in seq order), a page at a time; how
    many, and the file's SHA-256."""
    query, last, events = _page_query(month.partition), _FIRST, 0
    written = Progress(f"{month.month} written", month.events)
    with path.open("wb") as raw:
        hashed = _Hashed(raw)
        with gzip.GzipFile(os.fspath(path), "wb", fileobj=hashed) as handle:
            while rows := await conn.fetch(query, last, _PAGE):
                await _follow_leaves(conn, rows, ends)
                for row in rows:
                    handle.write(orjson.dumps(event_item(row)) + b"\n")
                    events += 1
                    written.update(events)
                last = rows[-1]["seq"]
    written.finish()
    return events, hashed.digest.hexdigest()


async def _seals(conn: asyncpg.Connection, ends: _Ends) -> list[dict[str, Any]]:
    """Each scope's seal: its tree size at the month's end, the proof to its checkpoint."""
    seals = []
    for scope, (first, size, last_hash) in sorted(ends.items()):
        latest = await latest_checkpoint(conn, scope)
        if latest is None or latest["size"] < size:
            raise ArchiveRefused(f"a checkpoint does not cover scope {scope!r}'s events yet")
        proof = await consistency_proof(conn, scope, size, int(latest["size"]))
        seals.append(
            {
                "scope": scope,
                "first_leaf": first,
                "size": size,
                "last_hash": last_hash.hex(),
                "checkpoint": latest["note"],
                "consistency": [base64.b64encode(h).decode() for h in proof],
                "_root": bytes(latest["root"]),
                "_checkpoint_size": int(latest["size"]),
            }
        )
    return seals


async def _leaves_match(conn: asyncpg.Connection, rows: list[dict[str, Any]]) -> None:
    """Each event read back is its scope's stored leaf: one query for a batch of them."""
    stored = {
        r["seq"]: (r["scope"], bytes(r["hash"]))
        for r in await conn.fetch(_STORED_LEAVES, [row["seq"] for row in rows])
    }
    for row in rows:
        if stored.get(row["seq"]) != (row["scope"], leaf_hash(row["hash"])):
            raise ArchiveRefused(f"seq {row['seq']}: the log and its tree disagree")


async def _check(
    conn: asyncpg.Connection, data: Path, seals: list[dict[str, Any]], shown: Progress
) -> None:
    """Read back what was written: each event's leaf is the stored tree's, and each proof
    leads from the stored tree at the month's end to its checkpoint."""
    batch: list[dict[str, Any]] = []
    with gzip.open(data, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                batch.append(read_event(data, number, line))
            except ArchiveBroken as exc:
                raise ArchiveRefused(f"the archive written does not read back: {exc}") from None
            if len(batch) == _BATCH:
                await _leaves_match(conn, batch)
                batch.clear()
            shown.update(number)
    await _leaves_match(conn, batch)
    shown.finish()
    for seal in seals:
        root = await tree_root(conn, seal["scope"], seal["size"])
        proof = [base64.b64decode(h) for h in seal["consistency"]]
        try:
            verify_consistency(seal["size"], seal["_checkpoint_size"], root, seal["_root"], proof)
        except (ProofInvalid, CheckpointInvalid) as exc:
            raise ArchiveRefused(f"scope {seal['scope']!r}: {exc}") from None


async def archive_month(
    conn: asyncpg.Connection,
    month: Month,
    directory: Path,
    *,
    drop: bool,
) -> int:
    """Write, check, then detach (and drop) one month, and record it as archived (the
    access report names the months it no longer holds); the events archived. Progress
    shows on a terminal."""
    data_name, manifest_name = archive_names(month.month)
    data, partial = directory / data_name, (directory / data_name).with_suffix(".tmp")
    ends: _Ends = {}
    async with conn.transaction():
        await conn.execute(f'LOCK TABLE "{month.partition}" IN SHARE ROW EXCLUSIVE MODE')
        try:
            events, sha256 = await _write(conn, month, partial, ends)
            seals = await _seals(conn, ends)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(data)
        await _check(conn, data, seals, Progress(f"{month.month} checked", events))
        manifest = {
            "v": 1,
            "month": month.month,
            "events": events,
            "sha256": sha256,
            "scopes": [{k: v for k, v in s.items() if not k.startswith("_")} for s in seals],
        }
        (directory / manifest_name).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        await conn.execute(f'ALTER TABLE audit_events DETACH PARTITION "{month.partition}"')
        if drop:
            await conn.execute(f'DROP TABLE "{month.partition}"')
        await conn.execute(_RECORD, month.month, events, sha256, drop)
    return events
