"""The scopes' Merkle trees in the database (migrations/0015, app/audit/trees.py): extended
with each digest up to its watermark, a signed checkpoint per tree that grew, written by the
owner-rights functions only; `python -m app audit build-trees` for an existing log; and what
a rewrite of the log does to the proofs."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest

from app.audit import trees
from app.audit.checkpoints import origin_of, verify_checkpoint
from app.audit.events import Event
from app.audit.merkle import (
    ProofInvalid,
    consistency_ranges,
    hashes_of,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from app.audit.signing import load_public_keys
from app.audit.trees import consistency_proof, inclusion_proof
from devkit.db import ProvisionedDatabase
from tests.audit.support import ACME, GLOBEX, chain, seed
from tests.audit.tamper import NAMES, RING, issue, launder, rewrite_and_recompute
from tests.audit.test_merkle import stored_nodes

KEYS = load_public_keys({"keys": list(RING.public)})


async def _checkpoints(owner: asyncpg.Connection, scope: str) -> list[asyncpg.Record]:
    return list(
        await owner.fetch("SELECT * FROM audit_checkpoints WHERE scope = $1 ORDER BY size", scope)
    )


async def _hashes(owner: asyncpg.Connection, scope: str) -> list[bytes]:
    return [bytes(r["hash"]) for r in await chain(owner, scope)]


async def _reads(writer: asyncpg.Pool, scope: str, count: int) -> None:
    for n in range(count):
        await seed(writer, scope, Event("patient.read", "R", detail={"n": n}))


class TestCheckpointsWithTheDigests:
    async def test_each_scope_gets_its_own_tree_and_signed_checkpoint(
        self, writer: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        await _reads(writer, ACME, 5)
        await _reads(writer, GLOBEX, 3)
        issued = await issue(database)
        for scope, size in ((ACME, 5), (GLOBEX, 3)):
            (row,) = await _checkpoints(owner, scope)
            checkpoint = verify_checkpoint(row["note"], KEYS)
            leaves = await _hashes(owner, scope)
            assert (checkpoint.size, row["size"], row["digest_number"]) == (size, size, 1)
            assert checkpoint.root == bytes(row["root"]) == root_of(size, stored_nodes(leaves))
            assert checkpoint.origin == origin_of(NAMES.key_id, NAMES.current(scope))
            assert checkpoint.signer == issued.kid == RING.kid
            assert "acme" not in row["note"] and "globex" not in row["note"]

    async def test_many_grown_trees_are_checkpointed_in_batches_each_its_own(
        self,
        writer: asyncpg.Pool,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(trees, "_CHECKPOINT_BATCH", 2)  # 5 scopes: batches of 2, 2, 1
        scopes = [f"org:batch{n}" for n in range(5)]
        for n, scope in enumerate(scopes):
            await _reads(writer, scope, n + 1)
        await issue(database)
        for n, scope in enumerate(scopes):
            (row,) = await _checkpoints(owner, scope)
            checkpoint = verify_checkpoint(row["note"], KEYS)
            leaves = await _hashes(owner, scope)
            assert checkpoint.size == row["size"] == n + 1
            assert checkpoint.root == bytes(row["root"]) == root_of(n + 1, stored_nodes(leaves))
            assert checkpoint.origin == origin_of(NAMES.key_id, NAMES.current(scope))

    async def test_the_next_digest_extends_the_tree_and_proves_it_consistent(
        self, writer: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        await _reads(writer, ACME, 5)
        await issue(database)
        await _reads(writer, GLOBEX, 2)
        await issue(database)  # ACME did not move: no new checkpoint for it
        assert [r["size"] for r in await _checkpoints(owner, ACME)] == [5]
        await _reads(writer, ACME, 6)
        await issue(database)
        old, new = await _checkpoints(owner, ACME)
        assert (old["size"], new["size"]) == (5, 11)
        proof = await consistency_proof(owner, ACME, 5, 11)
        verify_consistency(5, 11, bytes(old["root"]), bytes(new["root"]), proof)
        leaves = await _hashes(owner, ACME)
        for index, entry in enumerate(leaves):
            event = (await chain(owner, ACME))[index]
            got = await inclusion_proof(owner, ACME, event["id"], None)
            assert got is not None and (got.leaf_index, got.tree_size) == (index, 11)
            verify_inclusion(index, 11, leaf_hash(entry), got.path, bytes(new["root"]))

    async def test_an_event_after_the_watermark_waits_for_the_next_digest(
        self, writer: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        await _reads(writer, ACME, 2)
        await issue(database)
        await _reads(writer, ACME, 1)
        late = (await chain(owner, ACME))[-1]
        with pytest.raises(Exception, match="not covered by a checkpoint yet"):
            await inclusion_proof(owner, ACME, late["id"], None)
        await issue(database)
        got = await inclusion_proof(owner, ACME, late["id"], None)
        assert got is not None and (got.leaf_index, got.tree_size) == (2, 3)


class TestOnlyTheOwnerRightsFunctionsWrite:
    async def test_the_app_role_cannot_write_the_tree_or_a_checkpoint(
        self, writer: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        await _reads(writer, ACME, 3)
        await issue(database)
        before = await owner.fetch("SELECT * FROM audit_tree_nodes ORDER BY level, idx")
        async with writer.acquire() as conn:
            for statement in (
                "INSERT INTO audit_tree_nodes VALUES ('org:acme', 0, 9, sha256('x'))",
                "UPDATE audit_tree_nodes SET hash = sha256('x')",
                "DELETE FROM audit_tree_leaves",
                "UPDATE audit_trees SET size = 0",
                "INSERT INTO audit_checkpoints VALUES ('org:acme', 9, sha256('x'), 1, now(), 'n')",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
            # The function stores only the stored tree's own root, with the last digest.
            wrong = "SELECT audit_checkpoints_append('org:acme', 3, sha256('x'), 1, 'note')"
            with pytest.raises(asyncpg.InvalidParameterValueError, match="not the stored tree"):
                await conn.execute(wrong)
        assert await owner.fetch("SELECT * FROM audit_tree_nodes ORDER BY level, idx") == before
        assert len(await _checkpoints(owner, ACME)) == 1

    async def test_even_the_owner_cannot_change_or_delete_nodes(
        self, writer: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        await _reads(writer, ACME, 2)
        await issue(database)
        for statement in (
            "UPDATE audit_tree_nodes SET hash = sha256('x')",
            "DELETE FROM audit_tree_nodes",
            "TRUNCATE audit_checkpoints",
            "UPDATE audit_checkpoints SET note = ''",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await owner.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only grow"):
            await owner.execute("UPDATE audit_trees SET size = 1")


def _build_trees(database: ProvisionedDatabase, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database.app_url}
    return subprocess.run(
        [sys.executable, "-m", "app", "audit", "build-trees", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestBuildTrees:
    async def test_an_existing_log_is_brought_in_by_slices(
        self, writer: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        await _reads(writer, ACME, 7)
        await _reads(writer, GLOBEX, 4)
        result = _build_trees(database, "--batch", "3")
        assert result.returncode == 0, result.stderr
        assert "(11 leaves)" in result.stdout
        assert result.stderr == ""  # no progress line when piped
        sizes = dict(await owner.fetch("SELECT scope, size FROM audit_trees"))
        assert sizes == {ACME: 7, GLOBEX: 4}
        assert await owner.fetchval("SELECT count(*) FROM audit_checkpoints") == 0
        await issue(database)  # the next digest signs the trees as they are
        (row,) = await _checkpoints(owner, ACME)
        assert bytes(row["root"]) == root_of(7, stored_nodes(await _hashes(owner, ACME)))


class TestARewriteBreaksTheProofs:
    """What the migrations owner or a superuser can do to the log: each breaks the
    inclusion of the event touched, or the consistency with the checkpoint signed before."""

    @pytest.fixture
    async def signed(
        self, writer: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> asyncpg.Record:
        await _reads(writer, ACME, 6)
        await issue(database)
        (checkpoint,) = await _checkpoints(owner, ACME)
        return checkpoint

    def _rebuilt_is_inconsistent(self, old: asyncpg.Record, leaves: list[bytes]) -> None:
        """A tree rebuilt from the rewritten log does not extend the signed one."""
        nodes = stored_nodes(leaves)
        size = len(leaves)
        if size < old["size"]:  # a shorter tree cannot extend a longer one at all
            return
        proof = hashes_of(consistency_ranges(old["size"], size), nodes)
        with pytest.raises(ProofInvalid):
            verify_consistency(old["size"], size, bytes(old["root"]), root_of(size, nodes), proof)

    async def test_an_edited_event(self, owner: asyncpg.Connection, signed: asyncpg.Record) -> None:
        events = await chain(owner, ACME)
        await rewrite_and_recompute(owner, ACME, events[2]["seq"])
        edited = await chain(owner, ACME)
        proof = await inclusion_proof(owner, ACME, edited[2]["id"], 6)
        assert proof is not None
        with pytest.raises(ProofInvalid):  # the stored tree holds the event as signed
            verify_inclusion(2, 6, leaf_hash(edited[2]["hash"]), proof.path, bytes(signed["root"]))
        self._rebuilt_is_inconsistent(signed, [bytes(e["hash"]) for e in edited])

    async def test_a_deleted_event(self, owner: asyncpg.Connection, signed: asyncpg.Record) -> None:
        events = await chain(owner, ACME)
        await launder(owner, ACME, events[1]["seq"], keep=1)
        after = await _hashes(owner, ACME)
        assert len(after) == 5
        self._rebuilt_is_inconsistent(signed, [*after, after[-1]])  # even padded back to 6
        proof = await inclusion_proof(owner, ACME, events[2]["id"], 6)
        assert proof is not None
        with pytest.raises(ProofInvalid):  # the event that took its place is not leaf 1
            verify_inclusion(1, 6, leaf_hash(after[1]), proof.path, bytes(signed["root"]))

    async def test_reordered_events(
        self, owner: asyncpg.Connection, signed: asyncpg.Record
    ) -> None:
        leaves = await _hashes(owner, ACME)
        leaves[1], leaves[2] = leaves[2], leaves[1]
        self._rebuilt_is_inconsistent(signed, [*leaves, leaf_hash(b"next")])

    async def test_an_inserted_event(
        self, owner: asyncpg.Connection, signed: asyncpg.Record
    ) -> None:
        leaves = await _hashes(owner, ACME)
        self._rebuilt_is_inconsistent(signed, [*leaves[:3], leaf_hash(b"forged"), *leaves[3:]])
