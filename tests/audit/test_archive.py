"""Sealed monthly archives (app/audit/archive.py, app/audit/sealed.py): a closed month is
written, checked, then detached or dropped; the archives and the live log check offline as
one history, and an archived-then-dropped month's events still have inclusion proofs."""

from __future__ import annotations

import gzip
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from app.audit import archive
from app.audit.archive import ArchiveRefused, archive_month, closed_months, plan
from app.audit.events import Event
from app.audit.sealed import file_sha256
from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.audit.archives import MONTH, PARTITION, THIS_MONTH, cli, files_in, last_month
from tests.audit.support import ACME, GLOBEX, seed, window
from tests.audit.tamper import AUDIT_KEY, SCOPE_KEY, issue
from tests.fixtures.settings import make_settings


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(database, audit_signing_key=AUDIT_KEY, audit_scope_key=SCOPE_KEY)


@pytest.fixture
async def history(
    writer: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
) -> None:
    """Last month: 5 events of ACME, 3 of GLOBEX; this month 4 more of ACME; one digest."""
    await last_month(owner, ACME, 5)
    await last_month(owner, GLOBEX, 3)
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
        dry = cli(database, "archive", "--before", THIS_MONTH, "--to", tmp_path, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would archive {MONTH}: 8 event(s) from {PARTITION}, then detach it" in dry.stdout
        assert files_in(tmp_path) == []  # a dry run writes nothing
        done = cli(database, "archive", "--before", THIS_MONTH, "--to", tmp_path, "--drop")
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
        ok = cli(database, "verify-archives", "--dir", tmp_path, "--keys", keys, "--events", live)
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
        included = cli(
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
        assert cli(database, "archive", "--before", THIS_MONTH, "--to", tmp_path).returncode == 0
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
        broken = cli(database, "verify-archives", "--dir", tmp_path, "--keys", keys)
        assert broken.returncode == 1
        assert "does not continue its scope's chain" in broken.stderr

    async def test_a_month_not_yet_under_a_checkpoint_is_not_archived(
        self,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        tmp_path: Path,
    ) -> None:
        await last_month(owner, ACME, 2)  # no digest since: not in a tree yet
        refused = cli(database, "archive", "--before", THIS_MONTH, "--to", tmp_path, "--drop")
        assert refused.returncode == 1
        assert "is not in its scope's tree yet" in refused.stderr
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 2  # kept
        assert await owner.fetchval("SELECT to_regclass($1)", PARTITION) is not None

    async def test_a_month_refused_part_way_leaves_nothing_behind(
        self,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        await last_month(owner, ACME, 3)
        await issue(database)
        await last_month(owner, ACME, 2)  # since the digest: not in the tree yet
        monkeypatch.setattr(archive, "_PAGE", 2)  # the first pages are written, then refused
        [month] = await plan(owner, THIS_MONTH, datetime.now(UTC).date())
        with pytest.raises(ArchiveRefused, match="is not in its scope's tree yet"):
            await archive_month(owner, month, tmp_path, drop=True)
        assert files_in(tmp_path) == []
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 5
        assert await owner.fetchval("SELECT count(*) FROM audit_archived_months") == 0

    async def test_a_bad_month_is_refused(
        self, database: ProvisionedDatabase, tmp_path: Path
    ) -> None:
        result = cli(database, "archive", "--before", "2025-13", "--to", tmp_path)
        assert result.returncode == 1
        assert "--before '2025-13': expected YYYY-MM" in result.stderr
