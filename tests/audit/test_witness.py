"""A witness (app/audit/witness.py, `python -m app audit witness`) cosigns a scope's
checkpoint only when it extends the last one it cosigned, and refuses a fork loudly; the
service takes cosignatures only from AUDIT_WITNESS_KEYS and serves them with the checkpoint
(POST /api/audit-events/checkpoint/cosignatures)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.audit.checkpoints import (
    cosign,
    origin_of,
    sign_checkpoint,
    verify_checkpoint,
    verify_cosignature,
)
from app.audit.events import Event
from app.audit.merkle import leaf_hash
from app.audit.signing import load_public_keys
from app.audit.witness import STATE_FILE, WitnessRefused, public_entry, witness_once
from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.audit.support import ACME, actions, seed
from tests.audit.tamper import AUDIT_KEY, NAMES, RING, SCOPE_KEY, issue
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem

KEYS = load_public_keys({"keys": list(RING.public)})
WITNESS_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
STRANGER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
CHECKPOINT = "/api/audit-events/checkpoint"
COSIGNATURES = "/api/audit-events/checkpoint/cosignatures"


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(
        database,
        audit_signing_key=AUDIT_KEY,
        audit_scope_key=SCOPE_KEY,
        audit_witness_keys=public_entry("w1", WITNESS_KEY),
    )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The witness's directory, with its key."""
    seed_text = base64.urlsafe_b64encode(WITNESS_KEY.private_bytes_raw()).rstrip(b"=").decode()
    (tmp_path / "witness.key").write_text(f"w1:{seed_text}\n")
    return tmp_path


async def _reads(writer: asyncpg.Pool, count: int) -> None:
    for n in range(count):
        await seed(writer, ACME, Event("patient.read", "R", detail={"n": n}))


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def _cosignatures(owner: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await owner.fetch("SELECT * FROM audit_checkpoint_cosignatures ORDER BY size"))


def _forged(size: int) -> str:
    """A checkpoint the log signed for ACME showing another history of `size` events."""
    origin = origin_of(NAMES.key_id, NAMES.current(ACME))
    return sign_checkpoint(RING, origin, size, leaf_hash(b"another history"))


class TestTheWitness:
    async def test_it_cosigns_the_first_and_then_each_extension(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        writer: asyncpg.Pool,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        state: Path,
    ) -> None:
        await _reads(writer, 3)
        await issue(database)
        first = await witness_once(client, _token(acme), KEYS, state, "ignored")
        assert (first.checkpoint.size, first.previous, first.witness) == (3, None, "w1")
        await _reads(writer, 4)
        await issue(database)
        second = await witness_once(client, _token(acme), KEYS, state, "w1")
        assert second.previous is not None
        # 3, the witness's own read and cosignature (recorded in the scope), and 4 more.
        assert (second.previous.size, second.checkpoint.size) == (3, 9)
        assert [(r["size"], r["witness"]) for r in await _cosignatures(owner)] == [
            (3, "w1"),
            (9, "w1"),
        ]
        # Served with the checkpoint, after the log's signature; anyone can check it.
        served = (await client.get(CHECKPOINT, headers=acme)).text
        checkpoint = verify_checkpoint(served, KEYS)
        line = served.rstrip("\n").split("\n")[-1]
        witnesses = {"w1": WITNESS_KEY.public_key().public_bytes_raw()}
        assert verify_cosignature(line, checkpoint.text, witnesses) == "w1"
        assert verify_checkpoint((state / STATE_FILE).read_text(), KEYS).size == 9
        assert "audit.cosigned" in await actions(owner)

    async def test_a_fork_is_refused_loudly_and_nothing_is_cosigned(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        writer: asyncpg.Pool,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        state: Path,
    ) -> None:
        await _reads(writer, 5)
        await issue(database)
        (state / STATE_FILE).write_text(_forged(5))  # what the witness was shown before
        with pytest.raises(WitnessRefused) as refused:
            await witness_once(client, _token(acme), KEYS, state, "w1")
        message = str(refused.value)
        assert message.startswith("FORK: two trees of 5 events with different roots")
        real = verify_checkpoint((await client.get(CHECKPOINT, headers=acme)).text, KEYS)
        assert base64.b64encode(real.root).decode() in message  # both heads named
        assert base64.b64encode(leaf_hash(b"another history")).decode() in message
        assert await _cosignatures(owner) == []
        assert (state / STATE_FILE).read_text() == _forged(5)  # its state is kept

    async def test_a_history_that_does_not_extend_is_refused(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        writer: asyncpg.Pool,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        state: Path,
    ) -> None:
        await _reads(writer, 6)
        await issue(database)
        (state / STATE_FILE).write_text(_forged(4))
        with pytest.raises(WitnessRefused, match="does not extend the one this witness cosigned"):
            await witness_once(client, _token(acme), KEYS, state, "w1")
        assert await _cosignatures(owner) == []

    async def test_a_shrunken_tree_is_refused(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        writer: asyncpg.Pool,
        database: ProvisionedDatabase,
        state: Path,
    ) -> None:
        await _reads(writer, 2)
        await issue(database)
        (state / STATE_FILE).write_text(_forged(40))
        with pytest.raises(WitnessRefused, match="the log's tree shrank"):
            await witness_once(client, _token(acme), KEYS, state, "w1")


class TestCosignaturesEndpoint:
    @pytest.fixture
    async def signed(
        self, writer: asyncpg.Pool, database: ProvisionedDatabase, owner: asyncpg.Connection
    ) -> str:
        await _reads(writer, 3)
        await issue(database)
        note: str = await owner.fetchval("SELECT note FROM audit_checkpoints WHERE size = 3")
        return note.partition("\n\n")[0] + "\n"

    @pytest.mark.parametrize(
        ("case", "field"),
        [
            ("stranger", "cosignature"),  # a key AUDIT_WITNESS_KEYS does not list
            ("posing", "cosignature"),  # another key under a listed name
            ("other text", "cosignature"),  # a signature of another checkpoint
            ("no such size", "size"),
            ("malformed", "cosignature"),
        ],
    )
    async def test_a_cosignature_not_from_a_listed_witness_is_refused(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        signed: str,
        case: str,
        field: str,
    ) -> None:
        size, line = 3, cosign(WITNESS_KEY, "w1", signed, 1_700_000_000)
        if case == "stranger":
            line = cosign(STRANGER_KEY, "w2", signed, 1_700_000_000)
        elif case == "posing":
            line = cosign(STRANGER_KEY, "w1", signed, 1_700_000_000)
        elif case == "other text":
            line = cosign(WITNESS_KEY, "w1", signed.replace("\n3\n", "\n4\n"), 1_700_000_000)
        elif case == "no such size":
            size = 4
        elif case == "malformed":
            line = "w1 not a line"
        before = await actions(owner)
        response = await client.post(
            COSIGNATURES, json={"size": size, "cosignature": line}, headers=acme
        )
        assert_problem(response, 400, field)
        assert await _cosignatures(owner) == []
        assert await actions(owner) == before

    async def test_a_listed_witness_is_kept_once(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        signed: str,
    ) -> None:
        line = cosign(WITNESS_KEY, "w1", signed, 1_700_000_000)
        states = []
        for _ in range(2):
            response = await client.post(
                COSIGNATURES, json={"size": 3, "cosignature": line}, headers=acme
            )
            assert response.status_code == 200, response.text
            states.append(response.json()["state"])
        assert states == ["stored", "already stored"]
        assert len(await _cosignatures(owner)) == 1


def _witness_cli(state: Path, keys: Path, token: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUDIT_"))}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "audit",
            "witness",
            "--log",
            "http://127.0.0.1:9",
            "--keys",
            str(keys),
            "--state",
            str(state),
            "--token-file",
            str(token),
            "--name",
            "w9",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_command_makes_its_key_and_says_what_to_list(tmp_path: Path) -> None:
    keys, token, state = tmp_path / "keys.json", tmp_path / "token", tmp_path / "state"
    keys.write_text('{"keys": []}')
    token.write_text("t")
    state.mkdir()
    result = _witness_cli(state, keys, token)
    assert result.returncode == 1
    assert "AUDIT_WITNESS_KEYS lists w9:" in result.stdout
    assert "error: cannot reach the log" in result.stderr
    assert (state / "witness.key").stat().st_mode & 0o777 == 0o600
