"""`python -m app audit verify-export`: an auditor checks an export with no database and no
service (app/audit/offline.py), step by step as docs/audit.md tells them, and catches what
someone holding the database's keys does behind the service's back."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from app.audit.events import Event
from app.audit.offline import ExportInvalid, verify_export
from app.audit.signing import KeyRing
from app.audit.verify import verify_chain
from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.audit.support import ACME, GLOBEX, chain, recent, seed, window
from tests.audit.tamper import (
    AUDIT_KEY,
    OTHER_KEY,
    RING,
    SCOPE_KEY,
    fetch_export,
    forge_backdated,
    issue,
    rewrite_and_recompute,
)
from tests.fixtures.settings import make_settings

NOT_JSON = "not a JSON object (truncated?)"
NOT_EVENT = "not an exported audit event (fields missing or malformed)"
ED25519 = {**RING.signer_jwk, "kid": "a"}


def verify_cli(events: Path, digests: Path, keys: Path) -> subprocess.CompletedProcess[str]:
    """The auditor's command, on a machine with no service configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUDIT_"))}
    command = ["verify-export", "--events", str(events), "--digests", str(digests)]
    return subprocess.run(
        [sys.executable, "-m", "app", "audit", *command, "--keys", str(keys)],
        cwd=events.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    """The service that signed the digests: it publishes its key and names the scopes."""
    return make_settings(database, audit_signing_key=AUDIT_KEY, audit_scope_key=SCOPE_KEY)


@pytest.fixture
async def history(writer: asyncpg.Pool, database: ProvisionedDatabase) -> None:
    """Twelve events of ACME and some of GLOBEX, under three digests; the last two events of
    ACME come after the last digest."""
    for round_ in range(3):
        for _ in range(3):
            await seed(writer, ACME, Event("patient.read", "R", detail={"round": round_}))
            await seed(writer, GLOBEX, Event("patient.read", "R"))
        await issue(database)
    for _ in range(2):
        await seed(writer, ACME, Event("patient.read", "R"))


class TestTheAuditorsWalkthrough:
    async def test_an_untouched_export_is_intact(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        history: None,
        tmp_path: Path,
    ) -> None:
        """docs/audit.md, "Verifying an export": the same requests and the same command."""
        files = await fetch_export(client, acme, tmp_path, **window())
        result = verify_cli(*files)
        assert (result.returncode, result.stderr) == (0, ""), result.stdout
        assert result.stdout == (
            # Eleven, and the export's own `audit.exported`: three after the last digest.
            "intact: 12 event(s) in 1 scope(s), 3 digest(s), 3 signed head(s) found in the "
            "export; the last 3 event(s) are not under a digest yet\n"
        )

    async def test_a_chain_rewritten_and_recomputed_to_its_head_is_caught(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        app_pool: asyncpg.Pool,
        owner: asyncpg.Connection,
        history: None,
        tmp_path: Path,
    ) -> None:
        events = await chain(owner, ACME)
        await rewrite_and_recompute(owner, ACME, events[1]["seq"])
        async with app_pool.acquire() as conn:  # the database's own check is fooled
            assert (await verify_chain(conn, ACME, *recent())).status == "intact"
        files = await fetch_export(client, acme, tmp_path, **window())
        first_signed = events[2]["seq"]  # the head the first digest signed for ACME
        result = verify_cli(*files)
        assert result.returncode == 1
        assert result.stdout.startswith(
            f"broken: seq {first_signed} (line 3): digest 1 (line 1 of the digests) signed hash "
        )
        assert result.stdout.rstrip().endswith("the chain was rewritten")

    async def test_a_deleted_digest_is_caught(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        history: None,
        tmp_path: Path,
    ) -> None:
        await owner.execute("SET session_replication_role = replica")  # the superuser
        await owner.execute("DELETE FROM audit_digests WHERE number = 2")
        await owner.execute("SET session_replication_role = origin")
        result = verify_cli(*await fetch_export(client, acme, tmp_path, **window()))
        assert (result.returncode, result.stdout) == (
            1,
            "broken: digest 3 (line 2) follows digest 1: a digest is missing or out of place\n",
        )

    async def test_a_digest_signed_with_an_unknown_key_is_caught(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        writer: asyncpg.Pool,
        database: ProvisionedDatabase,
        history: None,
        tmp_path: Path,
    ) -> None:
        """The keys were pinned before; then someone with the owner's login registers a key
        of their own and has a copy of the service sign a digest with it."""
        pinned = await fetch_export(client, acme, tmp_path, **window())
        await seed(writer, ACME, Event("patient.read", "R"))
        await issue(database, KeyRing.from_setting(f"{OTHER_KEY},{AUDIT_KEY}"))
        later = tmp_path / "later"
        later.mkdir()
        events, digests, _ = await fetch_export(client, acme, later, **window())
        result = verify_cli(events, digests, pinned[2])
        assert (result.returncode, result.stdout) == (
            1,
            "broken: digest on line 4: signed with an unknown key (kid 'test-audit-2')\n",
        )

    async def test_events_removed_after_a_digest_are_caught(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        history: None,
        tmp_path: Path,
    ) -> None:
        events = await chain(owner, ACME)
        signed = events[8]["seq"]  # the head the last digest signed for ACME
        await owner.execute("SET session_replication_role = replica")
        await owner.execute("DELETE FROM audit_events WHERE seq >= $1 AND scope = $2", signed, ACME)
        await owner.execute(
            "UPDATE audit_chain_heads SET last_seq = $2, last_hash = $3 WHERE scope = $1",
            ACME,
            events[7]["seq"],
            events[7]["hash"],
        )
        await owner.execute("SET session_replication_role = origin")
        result = verify_cli(*await fetch_export(client, acme, tmp_path, **window()))
        assert (result.returncode, result.stdout) == (
            1,
            f"broken: seq {signed}: digest 3 (line 3 of the digests) signed it, and the export "
            "does not hold it: events were removed\n",
        )

    async def test_a_backdated_event_is_caught(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        history: None,
        tmp_path: Path,
    ) -> None:
        forged = await forge_backdated(owner, ACME, days=3)
        since = (datetime.now(UTC) - timedelta(days=5)).isoformat()
        result = verify_cli(*await fetch_export(client, acme, tmp_path, **window(since=since)))
        assert result.returncode == 1
        assert result.stdout.startswith(f"broken: seq {forged}: recorded at ")
        assert result.stdout.rstrip().endswith("which the chain puts ahead of it: backdated")


@pytest.fixture
async def export(
    client: httpx.AsyncClient, acme: dict[str, str], history: None, tmp_path: Path
) -> tuple[Path, Path, Path]:
    return await fetch_export(client, acme, tmp_path, **window())


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


class TestBadInput:
    """Every unreadable input: the file and line named, exit 1, never a traceback."""

    @pytest.mark.parametrize(
        ("which", "change", "message"),
        [
            ("events", lambda ls: [*ls[:4], b"{not json\n", *ls[4:]], f"line 5: {NOT_JSON}"),
            ("events", lambda ls: [*ls[:2], ls[2][: len(ls[2]) // 2]], f"line 3: {NOT_JSON}"),
            ("events", lambda ls: [*ls[:2], b"[1, 2]\n", *ls[2:]], f"line 3: {NOT_JSON}"),
            ("events", lambda ls: [*ls[:1], b"\n", *ls[1:]], f"line 2: {NOT_JSON}"),
            ("events", lambda ls: [ls[0], _without(ls[1], "hash"), *ls[2:]],
             f"line 2: {NOT_EVENT}"),
            ("events", lambda ls: [ls[0], _with(ls[1], seq="7"), *ls[2:]], f"line 2: {NOT_EVENT}"),
            ("events", lambda ls: [ls[0], _with(ls[1], recorded_at="now"), *ls[2:]],
             f"line 2: {NOT_EVENT}"),
            ("events", lambda ls: [ls[0], _with(ls[1], detail=[]), *ls[2:]],
             f"line 2: {NOT_EVENT}"),
            ("digests", lambda ls: [ls[0], ls[1][:40]], f"line 2: {NOT_JSON}"),
            ("digests", lambda ls: [ls[0], b'{"number": 2}\n', *ls[2:]], "line 2: no jws"),
            ("keys", lambda ls: [b'{"keys": ['], "not JSON"),
            ("keys", lambda ls: [b'{"keys": {}}'], 'not a JWKS: expected {"keys": [...]}'),
            ("keys", lambda ls: [orjson.dumps({"keys": [{"kty": "RSA", "kid": "a", "e": "AQAB"}]})],
             "key 1: not an Ed25519 key (kty OKP, crv Ed25519)"),
            ("keys", lambda ls: [orjson.dumps({"keys": [{**ED25519, "x": "AA"}]})],
             "key 1: x is not an Ed25519 public key"),
            ("keys", lambda ls: [orjson.dumps({"keys": [ED25519, ED25519]})],
             "key 2: kid 'a' appears twice"),
        ],
    )  # fmt: skip
    async def test_malformed_input_is_named(
        self,
        export: tuple[Path, Path, Path],
        which: str,
        change: object,
        message: str,
    ) -> None:
        files = dict(zip(("events", "digests", "keys"), export, strict=True))
        target = files[which]
        target.write_bytes(b"".join(change(_lines(target))))  # type: ignore[operator]
        with pytest.raises(ExportInvalid) as refused:
            verify_export(files["events"], files["digests"], files["keys"])
        assert str(refused.value) == f"{target}{' ' if 'line' in message else ': '}{message}"

    async def test_the_command_prints_one_line_and_exits_1(
        self, export: tuple[Path, Path, Path]
    ) -> None:
        events, digests, keys = export
        events.write_bytes(b"".join(_lines(events)[:3]) + b'{"seq": 4, "id"')
        result = verify_cli(events, digests, keys)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"error: {events} line 4: not a JSON object (truncated?)\n"

    async def test_a_missing_file_is_one_line(self, export: tuple[Path, Path, Path]) -> None:
        events, digests, keys = export
        missing = keys.parent / "nowhere.json"
        result = verify_cli(events, digests, missing)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"error: {missing}: cannot read it (No such file or directory)\n"
        assert "Traceback" not in result.stderr

    async def test_a_tampered_digest_line_is_broken_not_a_crash(
        self, export: tuple[Path, Path, Path]
    ) -> None:
        events, digests, keys = export
        lines = _lines(digests)
        item = orjson.loads(lines[1])
        header, payload, signature = item["jws"].split(".")
        item["jws"] = ".".join((header, payload[:-4] + "AAAA", signature))
        digests.write_bytes(b"".join([lines[0], orjson.dumps(item) + b"\n", *lines[2:]]))
        result = verify_cli(events, digests, keys)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stdout.startswith("broken: digest on line 2: ")


def _without(line: bytes, name: str) -> bytes:
    item = orjson.loads(line)
    del item[name]
    return orjson.dumps(item) + b"\n"


def _with(line: bytes, **values: object) -> bytes:
    return orjson.dumps(orjson.loads(line) | values) + b"\n"
