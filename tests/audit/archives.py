"""What the archive tests share: events recorded last month (a closed month, so it can be
archived), and the `python -m app audit` command line run as the operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from app.audit.chain import canonical_detail, content_digest, link_hash
from devkit.db import ProvisionedDatabase

LAST_MONTH = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).replace(day=10)
MONTH_BEFORE = (LAST_MONTH.replace(day=1) - timedelta(days=1)).replace(day=10)
PARTITION = f"audit_events_{LAST_MONTH:%Y_%m}"
MONTH = f"{LAST_MONTH:%Y-%m}"
THIS_MONTH = f"{datetime.now(UTC):%Y-%m}"
_COLUMNS = ("seq", "id", "occurred_at", "recorded_at", "scope", "actor", "action", "crud",
            "outcome", "patient_id", "detail", "prev_hash", "hash")  # fmt: skip


async def last_month(
    owner: asyncpg.Connection,
    scope: str,
    count: int,
    *,
    patient_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """`count` events of `scope` recorded last month, chained as the service chains them
    (written as the owner: the service records at the database's clock only), each about
    `patient_id` and with `detail` (else `{"n": n}`)."""
    start = LAST_MONTH.replace(day=1).date()
    end = (LAST_MONTH.replace(day=28) + timedelta(days=4)).replace(day=1).date()
    await owner.execute(
        f"CREATE TABLE IF NOT EXISTS {PARTITION} PARTITION OF audit_events "
        f"FOR VALUES FROM ('{start}') TO ('{end}')"
    )
    head = await owner.fetchrow("SELECT last_hash FROM audit_chain_heads WHERE scope = $1", scope)
    prev = head["last_hash"] if head is not None else None
    for n in range(count):
        seq = await owner.fetchval("SELECT nextval('audit_events_seq')")
        recorded = LAST_MONTH + timedelta(minutes=n)
        row: dict[str, Any] = {
            "id": uuid.uuid4(),
            "occurred_at": recorded,
            "scope": scope,
            "actor": "auth0|alice",
            **dict.fromkeys(("client_id", "session_id", "token_id", "source_ip", "user_agent")),
            "action": "patient.read",
            "crud": "R",
            "outcome": "success",
            **dict.fromkeys(("outcome_reason", "entity_type", "entity_id")),
            "patient_id": patient_id,
            "request_id": None,
            "detail": canonical_detail(detail if detail is not None else {"n": n}),
        }
        hash_ = link_hash(seq, recorded, content_digest(row), prev)
        await owner.execute(
            "INSERT INTO audit_events (seq, id, occurred_at, recorded_at, scope, actor, action, "
            "crud, outcome, patient_id, detail, prev_hash, hash) VALUES ($1, $2, $3, $3, $4, "
            "$5, 'patient.read', 'R', 'success', $6, $7::jsonb, $8, $9)",
            seq, row["id"], recorded, scope, row["actor"], patient_id, row["detail"].decode(),
            prev, hash_,
        )  # fmt: skip
        prev = hash_
    await owner.execute(
        "INSERT INTO audit_chain_heads (scope, last_seq, last_hash, updated_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (scope) DO UPDATE SET last_seq = $2, "
        "last_hash = $3, updated_at = $4",
        scope, seq, prev, recorded,
    )  # fmt: skip


async def bulk_month(
    owner: asyncpg.Connection,
    day: datetime,
    scopes: tuple[str, ...],
    count: int,
    patient_id: uuid.UUID,
) -> None:
    """`count` events recorded in `day`'s month, dealt in turn to `scopes`, whose chains
    start there (so the month's archive checks on its own), every tenth about `patient_id`;
    written with one COPY, as many as a test of size wants, and made the scopes' heads."""
    start, end = _month_bounds(day)
    name = f"audit_events_{day:%Y_%m}"
    await owner.execute(
        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF audit_events "
        f"FOR VALUES FROM ('{start}') TO ('{end}')"
    )
    last = await owner.fetchval(
        "SELECT setval('audit_events_seq', nextval('audit_events_seq') + $1 - 1)", count
    )
    heads: dict[str, bytes] = {}
    records = []
    for n in range(count):
        seq, scope = last - count + 1 + n, scopes[n % len(scopes)]
        recorded = day + timedelta(seconds=n)
        row: dict[str, Any] = {
            "id": uuid.uuid4(), "occurred_at": recorded, "scope": scope,
            "actor": f"auth0|user-{n % 97}",
            **dict.fromkeys(("client_id", "session_id", "token_id", "source_ip", "user_agent")),
            "action": "patient.read", "crud": "R", "outcome": "success",
            **dict.fromkeys(("outcome_reason", "entity_type", "entity_id", "request_id")),
            "patient_id": patient_id if n % 10 == 0 else uuid.uuid4(),
            "detail": canonical_detail({"n": n, "via": "get", "note": "x" * 200}),
        }  # fmt: skip
        row |= {"seq": seq, "recorded_at": recorded, "prev_hash": heads.get(scope)}
        row["hash"] = heads[scope] = link_hash(seq, recorded, content_digest(row), row["prev_hash"])
        row["detail"] = row["detail"].decode()
        records.append(tuple(row[c] for c in _COLUMNS))
    await owner.copy_records_to_table(name, records=records, columns=_COLUMNS)
    await owner.execute(
        "INSERT INTO audit_chain_heads (scope, last_seq, last_hash, updated_at) "
        "SELECT DISTINCT ON (scope) scope, seq, hash, recorded_at FROM audit_events "
        "WHERE scope = ANY($1::text[]) ORDER BY scope, seq DESC",
        list(scopes),
    )


def _month_bounds(day: datetime) -> tuple[date, date]:
    start = day.replace(day=1).date()
    return start, (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def files_in(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def cli(database: ProvisionedDatabase, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUDIT_"))}
    env |= {"DATABASE_URL": database.app_url, "MIGRATIONS_DATABASE_URL": database.owner_url}
    return subprocess.run(
        [sys.executable, "-m", "app", "audit", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
