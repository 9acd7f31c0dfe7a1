"""Sealed archives: how fast `python -m app audit archive` seals a closed month, and how
fast `verify-archives` checks it, in events per second.

    python -m bench.studies.archive [--url postgresql://postgres@127.0.0.1:5432/postgres]
                                    [--events 200000] [--quick]

Creates a throwaway database on the server (`devkit.db.provision`) and drops it at the end.
In one run:

1. Writes `--events` events into each of the two months before the current one (closed
   months), chained as the service chains them (200 scopes, one holding a third), with the
   history's shape of bench.studies.audit; then one digest, as `python -m app audit digest`
   issues it, which builds their trees and signs a checkpoint of each.
2. Times `python -m app audit archive --before M --to DIR` (the command itself, in a
   subprocess as the migrations owner, stderr piped so no progress is drawn) over the
   older month: write, read back and check, detach. Then `--drop` over the newer one:
   write, check, detach and drop. Events per second of each, and the archive's bytes per
   event (gzip NDJSON; the manifest apart).
3. Times `python -m app audit verify-archives` over both archives: events per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from app.audit.chain import canonical_detail, content_digest, link_hash
from app.audit.digests import issue_digest, register_keys
from app.audit.signing import KeyRing, ScopeNames
from app.core.db import asyncpg_dsn
from bench.studies.audit import BIG_SCOPE, patient_uuid
from bench.studies.merkle import HEADS
from devkit.db import LOCAL_SERVER_URL, ProvisionedDatabase, drop, provision
from devkit.keys import new_audit_scope_key, new_audit_signing_key

COLUMNS = (
    *("seq", "id", "occurred_at", "recorded_at", "scope", "actor", "client_id", "session_id"),
    *("token_id", "source_ip", "user_agent", "action", "crud", "outcome", "outcome_reason"),
    *("entity_type", "entity_id", "patient_id", "request_id", "detail", "prev_hash", "hash"),
)
ACTIONS = (("patient.read", "R", 0.70), ("patient.searched", "E", 0.80),
           ("patient.updated", "U", 0.85), ("patient.created", "C", 0.88),
           ("user.signed_in", "E", 0.96), ("profile.updated", "U", 0.98),
           ("audit.read", "R", 1.0))  # fmt: skip


def months_before(today: date) -> tuple[date, date, date]:
    """The first days of the two months before `today`'s, and of `today`'s."""
    current = today.replace(day=1)
    newer = (current - timedelta(days=1)).replace(day=1)
    older = (newer - timedelta(days=1)).replace(day=1)
    return older, newer, current


def _event(rng: random.Random, seq: int, at: datetime) -> dict[str, Any]:
    draw = rng.random()
    action, crud = next((a, c) for a, c, bound in ACTIONS if draw < bound)
    patient = patient_uuid(rng.randrange(100_000)) if action.startswith("patient.") else None
    detail = (
        {"via": "get", "patient_ids": [str(patient)]}
        if action == "patient.searched"
        else {"via": "get"}
    )
    outcome = rng.random()
    return {
        "seq": seq,
        "id": uuid.UUID(int=rng.getrandbits(128), version=4),
        "occurred_at": at,
        "recorded_at": at,
        "scope": BIG_SCOPE if rng.random() < 0.33 else f"org:o{rng.randrange(199)}",
        "actor": f"auth0|user-{rng.randrange(1000)}",
        "client_id": "spa-client",
        "session_id": f"{rng.getrandbits(128):032x}",
        "token_id": f"{rng.getrandbits(128):032x}",
        "source_ip": "198.51.100.7",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) bench",
        "action": action,
        "crud": crud,
        "outcome": "denied" if outcome < 0.01 else "failed" if outcome < 0.015 else "success",
        "outcome_reason": None,
        "entity_type": "patient",
        "entity_id": str(patient) if patient is not None else None,
        "patient_id": patient,
        "request_id": f"req-{seq}",
        "detail": canonical_detail(detail),
    }


async def write_month(
    owner: asyncpg.Connection, first: date, events: int, heads: dict[str, bytes]
) -> None:
    """`events` events spread over the month from `first`, chained after `heads`."""
    end = (first + timedelta(days=32)).replace(day=1)
    name = f"audit_events_{first:%Y_%m}"
    await owner.execute(
        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF audit_events "
        f"FOR VALUES FROM ('{first}') TO ('{end}')"
    )
    rng = random.Random(f"{first}")
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    step = (datetime(end.year, end.month, end.day, tzinfo=UTC) - start) / (events + 1)
    seqs = await owner.fetchval(
        "SELECT setval('audit_events_seq', nextval('audit_events_seq') + $1 - 1)", events
    )
    batch: list[tuple[Any, ...]] = []
    for n in range(events):
        row = _event(rng, seqs - events + 1 + n, start + step * (n + 1))
        row["prev_hash"] = heads.get(row["scope"])
        row["hash"] = link_hash(
            row["seq"], row["recorded_at"], content_digest(row), row["prev_hash"]
        )
        heads[row["scope"]] = row["hash"]
        row["detail"] = row["detail"].decode()
        batch.append(tuple(row[c] for c in COLUMNS))
        if len(batch) == 20_000 or n == events - 1:
            await owner.copy_records_to_table(name, records=batch, columns=COLUMNS)
            batch.clear()


def _command(db: ProvisionedDatabase, *args: str | Path) -> float:
    """Seconds `python -m app audit ARGS` took, as the operator runs it (stderr piped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUDIT_"))}
    env |= {"DATABASE_URL": db.app_url, "MIGRATIONS_DATABASE_URL": db.owner_url}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "app", "audit", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed: {done.stderr.strip()}")
    return seconds


async def prepare(db: ProvisionedDatabase, events: int, older: date, newer: date) -> KeyRing:
    """Two closed months of `events` each, their trees, and a signed checkpoint of each."""
    ring = KeyRing.from_setting(new_audit_signing_key("bench-archive"))
    names = ScopeNames.from_setting(new_audit_scope_key("bench-scope"))
    owner = await asyncpg.connect(asyncpg_dsn(db.owner_url))
    try:
        heads: dict[str, bytes] = {}
        for first in (older, newer):
            started = time.perf_counter()
            await write_month(owner, first, events, heads)
            print(f"  wrote {events:,} events of {first:%Y-%m} in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
        await owner.execute(HEADS)
        await owner.execute("ANALYZE audit_events")
        await register_keys(owner, ring)
    finally:
        await owner.close()
    app = await asyncpg.connect(asyncpg_dsn(db.app_url))
    try:
        started = time.perf_counter()
        await issue_digest(app, ring, names, known=None)
        print(f"  trees and checkpoints in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        await app.close()
    return ring


async def main(args: argparse.Namespace) -> None:
    events = 20_000 if args.quick else args.events
    older, newer, current = months_before(datetime.now(UTC).date())
    db: ProvisionedDatabase = await provision(args.url)
    try:
        print(f"writing 2 closed months of {events:,} events, chained")
        ring = await prepare(db, events, older, newer)
        with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
            directory = Path(tmp)
            detach = _command(db, "archive", "--before", f"{newer:%Y-%m}", "--to", directory)
            dropped = _command(
                db, "archive", "--before", f"{current:%Y-%m}", "--to", directory, "--drop"
            )
            keys = directory / "keys.json"
            keys.write_bytes(orjson.dumps({"keys": [ring.signer_jwk]}))
            verify = _command(db, "verify-archives", "--dir", directory, "--keys", keys)
            sizes = [(directory / f"audit-{m:%Y-%m}.ndjson.gz").stat().st_size
                     for m in (older, newer)]  # fmt: skip
        print(f"\n| {events:,} events a month | seconds | events/s |")
        print("|---|--:|--:|")
        print(f"| archive (write, check, detach) | {detach:.1f} | {events / detach:,.0f} |")
        print(f"| archive --drop (write, check, drop) | {dropped:.1f} | {events / dropped:,.0f} |")
        print(f"| verify-archives (both months) | {verify:.1f} | {2 * events / verify:,.0f} |")
        print(f"\narchive size: {sum(sizes) / (2 * events):,.0f} bytes per event (gzip NDJSON)")
    finally:
        await drop(db)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=LOCAL_SERVER_URL, help="a superuser URL of the server")
    parser.add_argument("--events", type=int, default=200_000, help="events in each month")
    parser.add_argument("--quick", action="store_true", help="20,000 events a month")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
