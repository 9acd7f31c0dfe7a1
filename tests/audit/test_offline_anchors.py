"""`verify-export` and the digests an auditor kept (app/audit/offline.py): the digests must
start at digest 1, or at a digest the auditor saved (`--anchor`), hold every saved digest
unchanged, and be there at all. The migrations owner's laundering of the security review
fools every check inside the database and a fresh export; a digest saved before catches it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.audit.events import Event
from app.audit.offline import ExportInvalid, verify_export
from app.audit.signing import KeyRing
from app.audit.verify import verify_chain
from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.audit.support import ACME, GLOBEX, chain, recent, seed, window
from tests.audit.tamper import AUDIT_KEY, OTHER_KEY, SCOPE_KEY, fetch_export, issue, launder
from tests.fixtures.settings import make_settings


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    """The service that signed the digests: it publishes its key and names the scopes."""
    return make_settings(database, audit_signing_key=AUDIT_KEY, audit_scope_key=SCOPE_KEY)


@pytest.fixture
async def history(writer: asyncpg.Pool, database: ProvisionedDatabase) -> None:
    """ACME's and GLOBEX's `patient.read`s under four digests, two of ACME's each."""
    for _ in range(4):
        for _ in range(2):
            await seed(writer, ACME, Event("patient.read", "R"))
            await seed(writer, GLOBEX, Event("patient.read", "R"))
        await issue(database)


def verify_cli(
    events: Path, digests: Path, keys: Path, *more: str
) -> subprocess.CompletedProcess[str]:
    """The auditor's command, on a machine with no service configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUDIT_"))}
    command = ["verify-export", "--events", str(events), "--digests", str(digests)]
    return subprocess.run(
        [sys.executable, "-m", "app", "audit", *command, "--keys", str(keys), *more],
        cwd=events.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _new(directory: Path) -> Path:
    directory.mkdir()
    return directory


async def _fetch(
    client: httpx.AsyncClient, acme: dict[str, str], directory: Path
) -> tuple[Path, Path, Path]:
    return await fetch_export(client, acme, _new(directory), **window())


class TestTheLaunderingOfTheReview:
    async def test_a_digest_saved_before_catches_what_nothing_else_does(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        app_pool: asyncpg.Pool,
        database: ProvisionedDatabase,
        history: None,
        tmp_path: Path,
    ) -> None:
        """docs/audit.md: the auditor keeps every digest they fetch, and passes them as
        anchors. Here the owner launders the log, and a copy of the service that knew no
        digest (a first start without a state file) signs a new digest 3 over it."""
        saved = (await _fetch(client, acme, tmp_path / "before"))[1]
        events = await chain(owner, ACME)
        await launder(owner, ACME, events[5]["seq"], keep=2)  # covered by digest 3
        await issue(database)
        async with app_pool.acquire() as conn:
            assert (await verify_chain(conn, ACME, *recent())).status == "intact"
        files = await _fetch(client, acme, tmp_path / "after")
        fooled = verify_cli(*files)
        assert (fooled.returncode, fooled.stdout.split(":")[0]) == (0, "intact")
        caught = verify_cli(*files, "--anchor", str(saved))
        assert (caught.returncode, caught.stderr) == (1, "")
        assert caught.stdout == (
            "broken: digest 3 (line 3) is not the digest 3 you saved (line 3 of the anchors): "
            "the digests were rewritten\n"
        )

    async def test_digests_deleted_and_not_yet_signed_anew_are_caught(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        history: None,
        tmp_path: Path,
    ) -> None:
        saved = (await _fetch(client, acme, tmp_path / "before"))[1]
        events = await chain(owner, ACME)
        await launder(owner, ACME, events[5]["seq"], keep=2)
        files = await _fetch(client, acme, tmp_path / "after")
        caught = verify_cli(*files, "--anchor", str(saved))
        assert (caught.returncode, caught.stdout) == (
            1,
            "broken: digest 3, which you saved (line 3 of the anchors), is not in the digests, "
            "which end at digest 2: digests were removed\n",
        )


@pytest.fixture
async def export(
    client: httpx.AsyncClient, acme: dict[str, str], history: None, tmp_path: Path
) -> tuple[Path, Path, Path]:
    return await fetch_export(client, acme, tmp_path, **window())


class TestWhereTheDigestsStart:
    async def test_an_empty_digests_file_is_broken(self, export: tuple[Path, Path, Path]) -> None:
        events, digests, keys = export
        digests.write_bytes(b"")
        result = verify_cli(events, digests, keys)
        assert (result.returncode, result.stderr) == (1, "")
        assert (
            result.stdout
            == f"broken: no digest in {digests}: nothing signed vouches for the export\n"
        )

    async def test_digests_that_start_after_digest_1_need_an_anchor(
        self, export: tuple[Path, Path, Path], tmp_path: Path
    ) -> None:
        events, digests, keys = export
        lines = _lines(digests)
        digests.write_bytes(b"".join(lines[2:]))
        result = verify_cli(events, digests, keys)
        assert (result.returncode, result.stdout) == (
            1,
            "broken: digest 3 (line 1) comes first: the digests must start at digest 1, or at a "
            "digest you saved (--anchor)\n",
        )
        anchor = tmp_path / "saved.ndjson"
        anchor.write_bytes(lines[2])
        result = verify_cli(events, digests, keys, "--anchor", str(anchor))
        assert result.returncode == 0, result.stdout
        assert result.stdout.startswith("intact: ")

    async def test_saved_digests_before_the_first_are_not_needed(
        self, export: tuple[Path, Path, Path], tmp_path: Path
    ) -> None:
        """The auditor fetches the digests from the last one they kept on."""
        events, digests, keys = export
        lines = _lines(digests)
        digests.write_bytes(b"".join(lines[1:]))
        anchor = tmp_path / "saved.ndjson"
        anchor.write_bytes(b"".join(lines[:2]))
        assert verify_export(events, digests, keys, anchors=anchor).intact


class TestBadAnchors:
    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (b"", "{anchor}: no digest in it"),
            (b"{not json\n", "{anchor} line 1: not a JSON object (truncated?)"),
            (b'{"number": 1}\n', "{anchor} line 1: no jws"),
        ],
    )
    async def test_an_unreadable_anchor_file_is_named(
        self, export: tuple[Path, Path, Path], tmp_path: Path, content: bytes, message: str
    ) -> None:
        anchor = tmp_path / "saved.ndjson"
        anchor.write_bytes(content)
        with pytest.raises(ExportInvalid) as refused:
            verify_export(*export, anchors=anchor)
        assert str(refused.value) == message.format(anchor=anchor)

    async def test_two_saved_digests_with_one_number_are_refused(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        history: None,
        tmp_path: Path,
    ) -> None:
        """The auditor kept digest 3, then a digest 3 signed anew after a laundering."""
        before = _lines((await _fetch(client, acme, tmp_path / "before"))[1])
        await launder(owner, ACME, (await chain(owner, ACME))[5]["seq"], keep=2)
        await issue(database)
        after = _lines((await _fetch(client, acme, tmp_path / "after"))[1])
        anchor = tmp_path / "kept.ndjson"
        anchor.write_bytes(b"".join([*before, after[2]]))
        events, digests, keys = await _fetch(client, acme, tmp_path / "now")
        with pytest.raises(ExportInvalid) as refused:
            verify_export(events, digests, keys, anchors=anchor)
        assert str(refused.value) == (
            f"{anchor} line 5: another digest 3 than line 3: the digests were rewritten "
            "before you saved the later one"
        )

    async def test_an_anchor_the_pinned_keys_do_not_check_is_refused(
        self,
        export: tuple[Path, Path, Path],
        database: ProvisionedDatabase,
        writer: asyncpg.Pool,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        tmp_path: Path,
    ) -> None:
        await seed(writer, ACME, Event("patient.read", "R"))
        await issue(database, KeyRing.from_setting(f"{OTHER_KEY},{AUDIT_KEY}"))
        foreign = _lines((await _fetch(client, acme, tmp_path / "later"))[1])[-1]
        anchor = tmp_path / "saved.ndjson"
        anchor.write_bytes(foreign)
        result = verify_cli(*export, "--anchor", str(anchor))
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            f"error: {anchor} line 1: signed with an unknown key (kid 'test-audit-2')\n"
        )
