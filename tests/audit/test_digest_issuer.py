"""The digest issuer remembers the last digest it signed or saw (in memory, and in
AUDIT_SIGNER_STATE_FILE) and refuses to sign over a digests table that does not continue it
(app/audit/runtime.py, app/audit/digests.py): the migrations owner's laundering of the
security review (delete an event, recompute the chain, delete the later digests) stops it,
says so in the log, the metrics and /readyz, and nothing is signed over the rewrite."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
import respx
from databases import Database
from prometheus_client import REGISTRY

from app.audit.anchor import Anchor, load_anchor
from app.audit.events import Event
from app.audit.runtime import DigestIssuer
from app.audit.signing import jws_hash
from app.core.settings import ConfigError, load_settings
from devkit.db import ProvisionedDatabase
from tests.audit.support import ACME, chain, seed
from tests.audit.tamper import AUDIT_KEY, NAMES, RING, SCOPE_KEY, issue, launder, register
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings

DAY = 86_400


async def _numbers(owner: asyncpg.Connection) -> list[int]:
    return [r["number"] for r in await owner.fetch("SELECT number FROM audit_digests ORDER BY 1")]


async def _anchor(owner: asyncpg.Connection, number: int) -> Anchor:
    jws = await owner.fetchval("SELECT jws FROM audit_digests WHERE number = $1", number)
    return Anchor(number, jws_hash(jws))


def _refusals() -> float:
    return REGISTRY.get_sample_value("audit_digest_refusals_total") or 0.0


@pytest.fixture
async def four_digests(writer: asyncpg.Pool, database: ProvisionedDatabase) -> None:
    """ACME's `patient.read`s under four digests (two events each), issued by other copies."""
    for _ in range(4):
        for _ in range(2):
            await seed(writer, ACME, Event("patient.read", "R"))
        await issue(database)


async def _launder(owner: asyncpg.Connection) -> None:
    """The review's attack: a `patient.read` covered by digest 3 deleted, the chain
    recomputed, the digests from 3 on deleted."""
    events = await chain(owner, ACME)
    await launder(owner, ACME, events[5]["seq"], keep=2)


def _issuer(pool: Database, state_file: Path | None = None) -> DigestIssuer:
    return DigestIssuer(pool, RING, NAMES, interval_seconds=DAY, state_file=state_file)


class TestTheIssuerRemembers:
    async def test_a_laundered_table_stops_the_issuer_that_saw_the_digests(
        self,
        pool: Database,
        owner: asyncpg.Connection,
        four_digests: None,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        issuer = _issuer(pool)
        assert await issuer.run_once() is None  # this interval has a digest: it only looks
        assert (issuer.known, issuer.state()) == (await _anchor(owner, 4), "ok")
        await _launder(owner)
        refusals = _refusals()
        with caplog.at_level(logging.ERROR, logger="app.audit.runtime"):
            assert await issuer.run_once() is None
            assert await issuer.run_once() is None  # stopped: it does not look again
        assert issuer.state() == "stopped"
        assert await _numbers(owner) == [1, 2]  # nothing signed over the rewrite
        assert _refusals() == refusals + 1
        assert REGISTRY.get_sample_value("audit_digests_stopped") == 1
        (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert record.getMessage().startswith(
            "audit digests stopped: refused to sign: the table lacks digest 4 ("
        )
        assert RING.signer_jwk["x"] not in caplog.text and AUDIT_KEY not in caplog.text

    async def test_a_digest_signed_anew_in_place_of_one_it_saw_is_refused(
        self,
        pool: Database,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        four_digests: None,
    ) -> None:
        """A copy that knew nothing (a fresh start without a state file) signed a new digest
        3 over the laundered log; the copy that saw the first digest 3 refuses it."""
        issuer = _issuer(pool)
        issuer.known = seen = await _anchor(owner, 3)
        await _launder(owner)
        await issue(database)  # the new digest 3, by a copy that trusted the table
        assert await issuer.run_once() is None
        assert issuer.state() == "stopped"
        assert issuer.stopped is not None
        assert issuer.stopped.startswith("refused to sign: digest 3 in the table (")
        assert issuer.stopped.endswith(f") is not {seen}")
        assert await _numbers(owner) == [1, 2, 3]

    async def test_digests_of_other_copies_that_continue_it_are_accepted(
        self, pool: Database, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        issuer = DigestIssuer(pool, RING, NAMES, interval_seconds=10)
        await register(database)
        first = await issuer.run_once()
        assert first is not None and first.number == 1
        await issue(database, registered=True)  # another copy, the same key
        await issue(database, registered=True)
        await issuer.run_once()  # in the same ten seconds, or the next: either way it goes on
        assert issuer.state() == "ok"
        assert issuer.known is not None and issuer.known.number >= 3
        assert issuer.known == await _anchor(owner, (await _numbers(owner))[-1])


class TestTheStateFile:
    async def test_the_issuer_keeps_what_it_signed_in_the_state_file(
        self,
        pool: Database,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        tmp_path: Path,
    ) -> None:
        state = tmp_path / "signer.json"
        await register(database)
        issued = await _issuer(pool, state).run_once()
        assert issued is not None
        assert load_anchor(state) == await _anchor(owner, 1)
        assert orjson.loads(state.read_bytes()).keys() == {"number", "hash"}
        assert os.listdir(tmp_path) == ["signer.json"]  # no temporary file left behind
        assert state.stat().st_mode & 0o777 == 0o600

    async def test_after_a_restart_the_state_file_stops_the_service_and_readyz_says_so(
        self,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        four_digests: None,
        tenant: respx.MockRouter,
        tmp_path: Path,
    ) -> None:
        """The service saw digest 4 before it went down; the owner launders the log; the
        service starts again: it refuses to sign, and stays in the load balancer."""
        state = tmp_path / "signer.json"
        settings = make_settings(database, audit_digests=True, audit_signing_key=AUDIT_KEY,
                                 audit_scope_key=SCOPE_KEY, audit_digest_interval_seconds=DAY,
                                 audit_signer_state_file=str(state))  # fmt: skip
        async with running_app(settings) as http:
            assert await _ready(http, "ok") == 200
        four = await _anchor(owner, 4)
        assert load_anchor(state) == four
        await _launder(owner)
        async with running_app(settings) as http:
            assert await _ready(http, "stopped") == 200
            metrics = (await http.get("/metrics")).text
        assert "\naudit_digests_stopped 1.0\n" in metrics
        assert "\naudit_digest_refusals_total " in metrics
        assert await _numbers(owner) == [1, 2]
        assert load_anchor(state) == four  # it still knows what it saw

    async def test_a_missing_state_file_trusts_the_table_once_and_says_so(
        self,
        pool: Database,
        owner: asyncpg.Connection,
        four_digests: None,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        state = tmp_path / "signer.json"
        with caplog.at_level(logging.WARNING, logger="app.audit.runtime"):
            assert await _issuer(pool, state).run_once() is None
        four = await _anchor(owner, 4)
        assert f"no state file at {state}): it trusted the table's last, {four}" in caplog.text
        assert load_anchor(state) == four

    @pytest.mark.parametrize("content", [b"", b"{}", b'{"number": 0, "hash": "00"}', b"\xff"])
    async def test_an_unreadable_state_file_stops_the_issuer(
        self,
        pool: Database,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        tmp_path: Path,
        content: bytes,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        state = tmp_path / "signer.json"
        state.write_bytes(content)
        await register(database)
        issuer = _issuer(pool, state)
        assert await issuer.run_once() is None
        assert issuer.state() == "stopped"
        assert await _numbers(owner) == []
        assert state.read_bytes() == content
        assert f"the state file is unreadable: {state}: not a digest issuer's state file" in (
            caplog.text
        )

    def test_its_directory_must_exist(self, tmp_path: Path) -> None:
        missing = tmp_path / "nowhere" / "signer.json"
        with pytest.raises(ConfigError) as refused:
            load_settings(**_BASE, audit_signer_state_file=str(missing))
        assert str(refused.value) == (
            "configuration error: invalid setting(s): AUDIT_SIGNER_STATE_FILE: "
            f"{missing} must name a file in an existing directory"
        )


_BASE = {
    "database_url": "postgresql://u@127.0.0.1/d",
    "auth0_domain": "tenant.example.com",
    "auth0_audience": "https://api.example.com",
    "auth0_client_id": "cid",
    "auth0_client_secret": "cli-secret-value",
    "app_secret_key": "0123456789abcdef0123456789abcdef-test",
    "_env_file": None,
}


async def _ready(http: httpx.AsyncClient, expected: str) -> int:
    """/readyz once the issuer's first run shows `expected`; its status code."""
    for _ in range(100):
        response = await http.get("/readyz")
        if response.json()["checks"].get("audit_digests") == expected:
            break
        await asyncio.sleep(0.05)
    body = response.json()
    assert body == {
        "status": "ready",
        "checks": {"database": "ok", "jwks": "ok", "audit_digests": expected},
    }
    return response.status_code


def _command(
    tmp_path: Path, database: ProvisionedDatabase, state: Path
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUDIT_"))}
    env = clean | {
        "DATABASE_URL": database.app_url,
        "AUDIT_SIGNING_KEY": AUDIT_KEY,
        "AUDIT_SCOPE_KEY": SCOPE_KEY,
        "AUDIT_SIGNER_STATE_FILE": str(state),
    }
    return subprocess.run(
        [sys.executable, "-m", "app", "audit", "digest"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestTheDigestCommand:
    """`python -m app audit digest` applies the same rule with the same state file."""

    async def test_it_records_what_it_signs_and_refuses_a_laundered_table(
        self,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        four_digests: None,
        tmp_path: Path,
    ) -> None:
        state = tmp_path / "signer.json"
        first = _command(tmp_path, database, state)
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("issued audit digest 5 at ")
        four = await _anchor(owner, 4)
        assert (
            first.stderr
            == f"note: no state file at {state} yet: trusted the table's last, {four}\n"
        )
        five = await _anchor(owner, 5)
        assert load_anchor(state) == five
        await _launder(owner)
        refused = _command(tmp_path, database, state)
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr == (
            f"error: refused to sign: the table lacks {five}, which this issuer signed or saw "
            "(docs/audit.md)\n"
        )
        assert await _numbers(owner) == [1, 2]
