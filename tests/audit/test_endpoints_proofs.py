"""GET /api/audit-events/checkpoint, /{id}/inclusion and /consistency (app/audit/endpoints/
proofs.py), and the auditor's offline checks of what they serve (`python -m app audit
verify-inclusion`, `verify-consistency`), step by step as docs/audit.md tells them."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app.audit.chain import canonical_detail, event_hash
from app.audit.checkpoints import origin_of, sign_checkpoint, verify_checkpoint
from app.audit.events import Event
from app.audit.evidence import exported_event
from app.audit.merkle import (
    inclusion_ranges,
    leaf_hash,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)
from app.audit.signing import load_public_keys
from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.audit.support import ACME, GLOBEX, actions, chain, seed, window
from tests.audit.tamper import AUDIT_KEY, NAMES, RING, SCOPE_KEY, issue
from tests.audit.test_merkle import stored_nodes
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem

CHECKPOINT = "/api/audit-events/checkpoint"
CONSISTENCY = "/api/audit-events/consistency"
KEYS = load_public_keys({"keys": list(RING.public)})


def _inclusion(event_id: Any) -> str:
    return f"/api/audit-events/{event_id}/inclusion"


def _b64s(values: list[str]) -> list[bytes]:
    return [base64.b64decode(v) for v in values]


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(database, audit_signing_key=AUDIT_KEY, audit_scope_key=SCOPE_KEY)


@pytest.fixture
async def history(writer: asyncpg.Pool, database: ProvisionedDatabase) -> None:
    """ACME: 5 events under digest 1, 9 under digest 2; GLOBEX: 4 events, interleaved."""
    for round_, count in enumerate((5, 4)):
        for n in range(count):
            await seed(writer, ACME, Event("patient.read", "R", detail={"r": round_, "n": n}))
            if n % 2 == 0:
                await seed(writer, GLOBEX, Event("patient.read", "R"))
        await issue(database)


class TestCheckpoint:
    async def test_the_callers_scope_latest_signed_tree_head(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        globex: dict[str, str],
        owner: asyncpg.Connection,
        history: None,
    ) -> None:
        response = await client.get(CHECKPOINT, headers=acme)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        checkpoint = verify_checkpoint(response.text, KEYS)
        assert checkpoint.size == 9
        assert checkpoint.origin == origin_of(NAMES.key_id, NAMES.current(ACME))
        theirs = verify_checkpoint((await client.get(CHECKPOINT, headers=globex)).text, KEYS)
        assert theirs.origin == origin_of(NAMES.key_id, NAMES.current(GLOBEX))
        assert theirs.size == 5
        assert (await actions(owner))[-2:] == ["audit.read", "audit.read"]

    async def test_none_yet_is_404_and_a_caller_without_permission_is_refused(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        unprivileged: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        assert_problem(await client.get(CHECKPOINT, headers=acme), 404)
        assert_problem(await client.get(CHECKPOINT, headers=unprivileged), 403)
        assert "audit.read" not in await actions(owner)


class TestInclusion:
    async def test_every_event_is_proved_in_the_latest_and_an_older_checkpoint(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        history: None,
    ) -> None:
        events = (await chain(owner, ACME))[:9]
        latest = verify_checkpoint((await client.get(CHECKPOINT, headers=acme)).text, KEYS)
        older = await owner.fetchval(
            "SELECT note FROM audit_checkpoints WHERE scope = $1 AND size = 5", ACME
        )
        for index, event in enumerate(events):
            body = (await client.get(_inclusion(event["id"]), headers=acme)).json()
            assert (body["leaf_index"], body["tree_size"], body["seq"]) == (index, 9, event["seq"])
            leaf = leaf_hash(event["hash"])
            verify_inclusion(index, 9, leaf, _b64s(body["audit_path"]), latest.root)
        for index, event in enumerate(events[:5]):
            response = await client.get(_inclusion(event["id"]), params={"size": 5}, headers=acme)
            body = response.json()
            root = verify_checkpoint(older, KEYS).root
            verify_inclusion(index, 5, leaf_hash(event["hash"]), _b64s(body["audit_path"]), root)

    async def test_a_proof_holds_only_the_callers_scope(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        globex: dict[str, str],
        owner: asyncpg.Connection,
        history: None,
    ) -> None:
        acme_events = (await chain(owner, ACME))[:9]
        acme_nodes = stored_nodes([e["hash"] for e in acme_events])
        globex_leaves = {leaf_hash(e["hash"]) for e in await chain(owner, GLOBEX)}
        for index, event in enumerate(acme_events):
            body = (await client.get(_inclusion(event["id"]), headers=acme)).json()
            path = _b64s(body["audit_path"])
            # Every hash is one of ACME's own subtrees; no GLOBEX leaf, seq or id.
            assert len(path) == len(inclusion_ranges(index, 9))
            assert set(path) <= {h for h in acme_nodes.values()} | _partials(acme_nodes)
            assert not set(path) & globex_leaves
        before = await actions(owner)
        response = await client.get(_inclusion(acme_events[0]["id"]), headers=globex)
        assert_problem(response, 404)  # another scope's event is not there at all
        assert await actions(owner) == before

    async def test_an_event_not_yet_under_a_checkpoint_is_404(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        writer: asyncpg.Pool,
        owner: asyncpg.Connection,
        history: None,
    ) -> None:
        await seed(writer, ACME, Event("patient.read", "R"))
        late = (await chain(owner, ACME))[-1]
        before = await actions(owner)
        body = assert_problem(await client.get(_inclusion(late["id"]), headers=acme), 404)
        assert "not covered by a checkpoint yet" in body["detail"]
        assert await actions(owner) == before

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ("size=0", "size"),
            ("size=-1", "size"),
            ("size=abc", "size"),
            ("size=1.5", "size"),
            ("size=", "size"),
            ("size=99999999999999999999", "size"),
            ("size=3&size=4", "size"),
            ("size=10", "size"),  # beyond the latest checkpoint (9)
            ("size=2", "size"),  # the event is leaf 4: not in a tree of 2
            ("sise=5", "sise"),
        ],
    )
    async def test_a_bad_size_is_400_naming_it_and_nothing_is_recorded(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        history: None,
        query: str,
        field: str,
    ) -> None:
        event = (await chain(owner, ACME))[4]
        before = await actions(owner)
        response = await client.get(f"{_inclusion(event['id'])}?{query}", headers=acme)
        assert_problem(response, 400, field)
        assert await actions(owner) == before


def _partials(nodes: dict[tuple[int, int], bytes]) -> set[bytes]:
    """Hashes of the incomplete right-hand subtrees of a 9-leaf tree (made of its nodes)."""
    return {subtree_hash(start, 9, nodes) for start in range(9)}


class TestConsistency:
    async def test_the_later_checkpoint_extends_the_earlier(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        history: None,
    ) -> None:
        notes = await owner.fetch(
            "SELECT size, note FROM audit_checkpoints WHERE scope = $1 ORDER BY size", ACME
        )
        old, new = (verify_checkpoint(r["note"], KEYS) for r in notes)
        before = len(await actions(owner))
        response = await client.get(CONSISTENCY, params={"from": 5, "to": 9}, headers=acme)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["from"], body["to"]) == (5, 9)
        verify_consistency(5, 9, old.root, new.root, _b64s(body["proof"]))
        assert len(await actions(owner)) == before + 1

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ("to=9", "from"),
            ("from=5", "to"),
            ("from=0&to=9", "from"),
            ("from=x&to=9", "from"),
            ("from=5&to=-9", "to"),
            ("from=6&to=5", "from"),
            ("from=5&to=10", "to"),  # beyond the latest checkpoint
            ("from=5&to=9&to=9", "to"),
            ("from=5&to=9&size=3", "size"),
        ],
    )
    async def test_a_bad_from_or_to_is_400_naming_it_and_nothing_is_recorded(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        history: None,
        query: str,
        field: str,
    ) -> None:
        before = await actions(owner)
        assert_problem(await client.get(f"{CONSISTENCY}?{query}", headers=acme), 400, field)
        assert await actions(owner) == before


# --- The auditor's offline checks -------------------------------------------------------------


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """On a machine with no service configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUDIT_"))}
    return subprocess.run(
        [sys.executable, "-m", "app", "audit", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _inclusion_cli(files: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    return _cli(
        "verify-inclusion",
        *("--event", files["event"], "--proof", files["proof"]),
        *("--checkpoint", files["checkpoint"], "--keys", files["keys"]),
    )


class TestOfflineChecks:
    @pytest.fixture
    async def files(
        self, client: httpx.AsyncClient, acme: dict[str, str], history: None, tmp_path: Path
    ) -> dict[str, Path]:
        """docs/audit.md, "Proving one event": one exported event, its proof, the
        checkpoint, the pinned keys; and a consistency proof with the older checkpoint."""
        export = await client.get(
            "/api/audit-events/export", params={"format": "ndjson", **window()}, headers=acme
        )
        item = orjson.loads(export.content.splitlines()[6])
        paths = {name: tmp_path / name for name in ("event", "proof", "checkpoint", "keys")}
        paths["event"].write_bytes(orjson.dumps(item))
        proof = await client.get(_inclusion(item["id"]), headers=acme)
        paths["proof"].write_bytes(proof.content)
        paths["checkpoint"].write_bytes((await client.get(CHECKPOINT, headers=acme)).content)
        paths["keys"].write_bytes((await client.get("/.well-known/audit-keys")).content)
        return paths

    async def test_an_event_in_the_signed_tree(self, files: dict[str, Path]) -> None:
        result = _inclusion_cli(files)
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        assert "is leaf 6 of the tree of 9 events signed by test-audit-1" in result.stdout

    async def test_an_edited_event_is_refused(self, files: dict[str, Path]) -> None:
        item = orjson.loads(files["event"].read_bytes())
        files["event"].write_bytes(orjson.dumps({**item, "outcome": "denied"}))
        result = _inclusion_cli(files)
        assert result.returncode == 1
        assert "the event's fields do not give its hash (edited?)" in result.stderr

    async def test_an_event_hashed_anew_is_not_in_the_tree(
        self, files: dict[str, Path], owner: asyncpg.Connection
    ) -> None:
        item = orjson.loads(files["event"].read_bytes())
        item["outcome"] = "denied"
        row = exported_event(files["event"], 1, item)
        row["detail"] = canonical_detail(row["detail"])
        item["hash"] = event_hash(row).hex()  # a rewrite that recomputed the chain
        files["event"].write_bytes(orjson.dumps(item))
        result = _inclusion_cli(files)
        assert result.returncode == 1
        assert "is not in the checkpoint's tree" in result.stderr

    async def test_a_checkpoint_not_signed_by_a_pinned_key_is_refused(
        self, files: dict[str, Path]
    ) -> None:
        text = files["checkpoint"].read_text()
        files["checkpoint"].write_text(text.replace("\n9\n", "\n8\n", 1))
        result = _inclusion_cli(files)
        assert result.returncode == 1
        assert "does not hold" in result.stderr

    async def test_consistency_and_a_fork(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        files: dict[str, Path],
        tmp_path: Path,
    ) -> None:
        old = tmp_path / "old.txt"
        old.write_text(
            await owner.fetchval(
                "SELECT note FROM audit_checkpoints WHERE scope = $1 AND size = 5", ACME
            )
        )
        proof = tmp_path / "consistency.json"
        response = await client.get(CONSISTENCY, params={"from": 5, "to": 9}, headers=acme)
        proof.write_bytes(response.content)
        args = ("--proof", proof, "--keys", files["keys"])
        ok = _cli("verify-consistency", "--old", old, "--new", files["checkpoint"], *args)
        assert (ok.returncode, ok.stderr) == (0, ""), ok.stderr
        assert "the tree of 9 events extends the tree of 5" in ok.stdout
        # The log shows another history of the same size: signed, but not an extension.
        fork = tmp_path / "fork.txt"
        origin = origin_of(NAMES.key_id, NAMES.current(ACME))
        fork.write_text(sign_checkpoint(RING, origin, 9, leaf_hash(b"another history")))
        bad = _cli("verify-consistency", "--old", old, "--new", fork, *args)
        assert bad.returncode == 1
        assert "does not extend the old one" in bad.stderr
        swapped = _cli("verify-consistency", "--old", files["checkpoint"], "--new", old, *args)
        assert swapped.returncode == 1
        assert "the proof is from 5 to 9, the checkpoints are of 9 and 5" in swapped.stderr
