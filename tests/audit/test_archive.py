"""Sealed monthly archives (app/audit/archive.py, app/audit/sealed.py): a closed month is
written, checked, then detached or dropped; the archives and the live log check offline as
one history, and an archived-then-dropped month's events still have inclusion proofs."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app.audit.archive import closed_months
from app.audit.chain import canonical_detail, content_digest, link_hash
from app.audit.events import Event
from app.audit.sealed import file_sha256
from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.audit.support import ACME, GLOBEX, seed, window
from tests.audit.tamper import AUDIT_KEY, SCOPE_KEY, issue
from tests.fixtures.settings import make_settings

LAST_MONTH = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).replace(day=10)
PARTITION = f"audit_events_{LAST_MONTH:%Y_%m}"
MONTH = f"{LAST_MONTH:%Y-%m}"
THIS_MONTH = f"{datetime.now(UTC):%Y-%m}"


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(database, audit_signing_key=AUDIT_KEY, audit_scope_key=SCOPE_KEY)


async def _last_month(owner: asyncpg.Connection, scope: str, count: int) -> None:
    """`count` events of `scope` recorded last month, chained as the service chains them
    (written as the owner: the service records at the database's clock only)."""
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
            **dict.fromkeys(("outcome_reason", "entity_type", "entity_id", "patient_id")),
            "request_id": None,
            "detail": canonical_detail({"n": n}),
        }
        hash_ = link_hash(seq, recorded, content_digest(row), prev)
        await owner.execute(
            "INSERT INTO audit_events (seq, id, occurred_at, recorded_at, scope, actor, action, "
            "crud, outcome, detail, prev_hash, hash) VALUES ($1, $2, $3, $3, $4, $5, "
            "'patient.read', 'R', 'success', $6::jsonb, $7, $8)",
            seq, row["id"], recorded, scope, row["actor"], f'{{"n": {n}}}', prev, hash_,
        )  # fmt: skip
        prev = hash_
    await owner.execute(
        "INSERT INTO audit_chain_heads (scope, last_seq, last_hash, updated_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (scope) DO UPDATE SET last_seq = $2, "
        "last_hash = $3, updated_at = $4",
        scope, seq, prev, recorded,
    )  # fmt: skip


def _files(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def _cli(database: ProvisionedDatabase, *args: str | Path) -> subprocess.CompletedProcess[str]:
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


@pytest.fixture
async def history(
    writer: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
) -> None:
    """Last month: 5 events of ACME, 3 of GLOBEX; this month 4 more of ACME; one digest."""
    await _last_month(owner, ACME, 5)
    await _last_month(owner, GLOBEX, 3)
    for n in range(4):
        await seed(writer, ACME, Event("patient.read", "R", detail={"now": n}))
    await issue(database)


def test_only_closed_months_before_the_bound_are_archived() -> None:
    names = ["audit_events_2025_01", "audit_events_2025_02", "audit_events_2025_03",
             "audit_events_default", "audit_events_2025_13"]  # fmt: skip
    assert closed_months(names, "2025-03", date(2025, 5, 2)) == [
        "audit_events_2025_01",
        "audit_events_2025_02",
    ]
    assert closed_months(names, "2026-01", date(2025, 3, 9)) == [
        "audit_events_2025_01",
        "audit_events_2025_02",
    ]


class TestArchive:
    async def test_a_month_sealed_dropped_and_still_proved(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        history: None,
        tmp_path: Path,
    ) -> None:
        archived = (await owner.fetch(f"SELECT id, hash FROM {PARTITION} WHERE scope = $1", ACME))[
            2
        ]
        dry = _cli(database, "archive", "--before", THIS_MONTH, "--to", tmp_path, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would archive {MONTH}: 8 event(s) from {PARTITION}, then detach it" in dry.stdout
        assert _files(tmp_path) == []  # a dry run writes nothing
        done = _cli(database, "archive", "--before", THIS_MONTH, "--to", tmp_path, "--drop")
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        assert f"archived {MONTH}: 8 event(s), checked, {PARTITION} dropped" in done.stdout
        assert await owner.fetchval("SELECT to_regclass($1)", PARTITION) is None
        # The auditor's check: the archives, then the live log from this month, one history.
        keys = tmp_path / "keys.json"
        keys.write_bytes((await client.get("/.well-known/audit-keys")).content)
        live = tmp_path / "live.ndjson"
        export = await client.get(
            "/api/audit-events/export", params={"format": "ndjson", **window()}, headers=acme
        )
        live.write_bytes(export.content)
        ok = _cli(database, "verify-archives", "--dir", tmp_path, "--keys", keys, "--events", live)
        assert (ok.returncode, ok.stderr) == (0, ""), ok.stderr
        assert "intact: 8 archived event(s) in 1 archive(s), 2 scope(s)" in ok.stdout
        assert "continue them" in ok.stdout
        # A dropped month's event still has its proof, checked offline with its archived line.
        proof = await client.get(f"/api/audit-events/{archived['id']}/inclusion", headers=acme)
        assert proof.status_code == 200, proof.text
        with gzip.open(tmp_path / f"audit-{MONTH}.ndjson.gz", "rb") as handle:
            line = next(x for x in handle if str(archived["id"]).encode() in x)
        files = {name: tmp_path / name for name in ("event.json", "proof.json", "ckpt.txt")}
        files["event.json"].write_bytes(line)
        files["proof.json"].write_bytes(proof.content)
        files["ckpt.txt"].write_bytes(
            (await client.get("/api/audit-events/checkpoint", headers=acme)).content
        )
        included = _cli(
            database, "verify-inclusion", "--event", files["event.json"], "--proof",
            files["proof.json"], "--checkpoint", files["ckpt.txt"], "--keys", keys,
        )  # fmt: skip
        assert included.returncode == 0, included.stderr
        assert "is leaf 2 of the tree" in included.stdout

    async def test_an_edited_archive_is_caught(
        self,
        client: httpx.AsyncClient,
        database: ProvisionedDatabase,
        history: None,
        tmp_path: Path,
    ) -> None:
        assert _cli(database, "archive", "--before", THIS_MONTH, "--to", tmp_path).returncode == 0
        keys = tmp_path / "keys.json"
        keys.write_bytes((await client.get("/.well-known/audit-keys")).content)
        data = tmp_path / f"audit-{MONTH}.ndjson.gz"
        lines = gzip.decompress(data.read_bytes()).splitlines()
        # Someone drops an event and reseals the file's hash in the manifest.
        with gzip.open(data, "wb") as handle:
            handle.write(b"\n".join(lines[:1] + lines[2:]) + b"\n")
        manifest_path = tmp_path / f"audit-{MONTH}.json"
        manifest = orjson.loads(manifest_path.read_bytes())
        manifest["sha256"] = file_sha256(data)
        manifest["events"] = 7
        manifest_path.write_bytes(orjson.dumps(manifest))
        broken = _cli(database, "verify-archives", "--dir", tmp_path, "--keys", keys)
        assert broken.returncode == 1
        assert "does not continue its scope's chain" in broken.stderr

    async def test_a_month_not_yet_under_a_checkpoint_is_not_archived(
        self,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        tmp_path: Path,
    ) -> None:
        await _last_month(owner, ACME, 2)  # no digest since: not in a tree yet
        refused = _cli(database, "archive", "--before", THIS_MONTH, "--to", tmp_path, "--drop")
        assert refused.returncode == 1
        assert "is not in its scope's tree yet" in refused.stderr
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 2  # kept
        assert await owner.fetchval("SELECT to_regclass($1)", PARTITION) is not None

    async def test_a_bad_month_is_refused(
        self, database: ProvisionedDatabase, tmp_path: Path
    ) -> None:
        result = _cli(database, "archive", "--before", "2025-13", "--to", tmp_path)
        assert result.returncode == 1
        assert "--before '2025-13': expected YYYY-MM" in result.stderr
