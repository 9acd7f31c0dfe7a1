"""A patient's access report once months are archived: the live report names the months it
no longer holds, and `python -m app audit access-report` lists the patient's archived events
from the archives, each file checked against its manifest first."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from app.audit.events import Event
from app.audit.sealed import file_sha256
from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.audit.archives import MONTH, THIS_MONTH, cli, last_month
from tests.audit.support import ACME, GLOBEX, seed
from tests.audit.tamper import AUDIT_KEY, SCOPE_KEY, issue
from tests.fixtures.settings import make_settings

PATIENT, OTHER = uuid.uuid4(), uuid.uuid4()


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(database, audit_signing_key=AUDIT_KEY, audit_scope_key=SCOPE_KEY)


@pytest.fixture
async def archived(
    writer: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase, tmp_path: Path
) -> Path:
    """Last month: 2 events of ACME about the patient, 1 of GLOBEX showing it among others,
    1 of ACME about another; this month one more about it; a digest; last month archived
    and dropped into `tmp_path / "archives"`."""
    await last_month(owner, ACME, 2, patient_id=PATIENT)
    await last_month(owner, GLOBEX, 1, detail={"patient_ids": [str(OTHER), str(PATIENT).upper()]})
    await last_month(owner, ACME, 1, patient_id=OTHER, detail={"patient_ids": [str(OTHER)]})
    await seed(writer, ACME, Event("patient.read", "R", patient_id=PATIENT), sub="auth0|doc")
    await issue(database)
    directory = tmp_path / "archives"
    directory.mkdir()
    done = cli(database, "archive", "--before", THIS_MONTH, "--to", directory, "--drop")
    assert done.returncode == 0, done.stderr
    return directory


async def _keys(client: httpx.AsyncClient, tmp_path: Path) -> Path:
    keys = tmp_path / "keys.json"
    keys.write_bytes((await client.get("/.well-known/audit-keys")).content)
    return keys


class TestLiveReport:
    def url(self, patient: uuid.UUID) -> str:
        return f"/api/patients/{patient}/access-report"

    async def test_no_month_archived(self, client: httpx.AsyncClient, acme: dict[str, str]) -> None:
        body = (await client.get(self.url(PATIENT), headers=acme)).json()
        assert body["archived_months"] == []

    async def test_names_the_archived_months(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        archived: Path,
    ) -> None:
        response = await client.get(self.url(PATIENT), headers=acme)
        assert response.status_code == 200, response.text
        body = response.json()
        # The report holds this month's event only, and says which months it cannot list.
        assert [i["patient_id"] for i in body["items"]] == [str(PATIENT)]
        assert body["archived_months"] == [MONTH]
        assert body["next_cursor"] is None
        row = await owner.fetchrow("SELECT * FROM audit_archived_months")
        assert (row["month"], row["events"], row["dropped"]) == (MONTH, 4, True)
        manifest = orjson.loads((archived / f"audit-{MONTH}.json").read_bytes())
        assert row["sha256"] == manifest["sha256"]

    async def test_only_the_owner_writes_the_archived_months(self, writer: asyncpg.Pool) -> None:
        async with writer.acquire() as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "INSERT INTO audit_archived_months (month, events, sha256, dropped) "
                    "VALUES ('2020-01', 1, $1, false)",
                    "0" * 64,
                )
            assert await conn.fetchval("SELECT count(*) FROM audit_archived_months") == 0


class TestOfflineReport:
    async def test_lists_the_patients_archived_events(
        self, client: httpx.AsyncClient, database: ProvisionedDatabase, archived: Path
    ) -> None:
        done = cli(database, "access-report", "--dir", archived, "--patient", PATIENT)
        assert done.returncode == 0, done.stderr
        lines = [orjson.loads(line) for line in done.stdout.splitlines()]
        assert [(e["scope"], e["patient_id"]) for e in lines] == [
            (ACME, str(PATIENT)),
            (ACME, str(PATIENT)),
            (GLOBEX, None),  # showed the patient among others
        ]
        assert [e["seq"] for e in lines] == sorted(e["seq"] for e in lines)
        assert f"3 archived event(s) about the patient in 1 archive(s) ({MONTH} to {MONTH})" in (
            done.stderr
        )
        nobody = cli(database, "access-report", "--dir", archived, "--patient", uuid.uuid4())
        assert (nobody.returncode, nobody.stdout) == (0, "")
        assert "0 archived event(s)" in nobody.stderr

    async def test_with_keys_the_archives_are_verified_first(
        self,
        client: httpx.AsyncClient,
        database: ProvisionedDatabase,
        archived: Path,
        tmp_path: Path,
    ) -> None:
        keys = await _keys(client, tmp_path)
        done = cli(database, "access-report", "--dir", archived, "--patient", OTHER, "--keys", keys)
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 2
        assert "verified as one history under their signed checkpoints" in done.stderr

    @pytest.mark.parametrize(
        "patient", ["42", "not-a-uuid", f"{{{uuid.uuid4()}}}", f"{uuid.uuid4()}0", ""]
    )
    async def test_a_bad_patient_id_is_refused(
        self, database: ProvisionedDatabase, tmp_path: Path, patient: str
    ) -> None:
        done = cli(database, "access-report", "--dir", tmp_path, "--patient", patient)
        assert done.returncode == 2
        assert "argument --patient: not a patient id" in done.stderr
        assert done.stdout == ""

    async def test_an_edited_archive_lists_nothing(
        self, database: ProvisionedDatabase, archived: Path
    ) -> None:
        data = archived / f"audit-{MONTH}.ndjson.gz"
        lines = gzip.decompress(data.read_bytes()).splitlines()
        # Someone takes the patient out of an archived event.
        edited = [line.replace(str(PATIENT).encode(), str(OTHER).encode()) for line in lines]
        data.write_bytes(gzip.compress(b"\n".join(edited) + b"\n"))
        done = cli(database, "access-report", "--dir", archived, "--patient", PATIENT)
        assert done.returncode == 1
        assert "not the file its manifest sealed" in done.stderr
        assert done.stdout == ""

    async def test_a_resealed_manifest_is_caught_with_keys(
        self,
        client: httpx.AsyncClient,
        database: ProvisionedDatabase,
        archived: Path,
        tmp_path: Path,
    ) -> None:
        keys = await _keys(client, tmp_path)
        data = archived / f"audit-{MONTH}.ndjson.gz"
        lines = gzip.decompress(data.read_bytes()).splitlines()
        data.write_bytes(gzip.compress(b"\n".join(lines[1:]) + b"\n"))  # an event removed
        manifest_path = archived / f"audit-{MONTH}.json"
        manifest = orjson.loads(manifest_path.read_bytes())
        manifest |= {"sha256": file_sha256(data), "events": 3}
        manifest_path.write_bytes(orjson.dumps(manifest))
        done = cli(
            database, "access-report", "--dir", archived, "--patient", PATIENT, "--keys", keys
        )
        assert done.returncode == 1
        assert "error: broken:" in done.stderr
        assert done.stdout == ""

    async def test_no_archive(self, database: ProvisionedDatabase, tmp_path: Path) -> None:
        done = cli(database, "access-report", "--dir", tmp_path, "--patient", PATIENT)
        assert done.returncode == 1
        assert "no archive" in done.stderr
        assert done.stdout == ""
