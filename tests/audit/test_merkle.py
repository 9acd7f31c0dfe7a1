"""The Merkle tree's hashing, proofs and checks (app/audit/merkle.py), against a plain
RFC 9162 implementation written here (random trees of 1 to 2,000 leaves, every index,
every older size) and against transparency-dev/merkle's published test vectors."""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from app.audit.merkle import (
    Frontier,
    NodeKey,
    ProofInvalid,
    consistency_ranges,
    hashes_of,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    nodes_for,
    root_of,
    verify_consistency,
    verify_inclusion,
)

VECTORS = orjson.loads((Path(__file__).parent / "data" / "rfc6962_vectors.json").read_bytes())


# --- A plain RFC 9162 (section 2.1) reference, straight from the text --------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def reference(entries: list[bytes]) -> tuple[Callable[[int, int], bytes], ...]:
    @functools.cache
    def mth(a: int, b: int) -> bytes:
        if b - a == 1:
            return hashlib.sha256(b"\x00" + entries[a]).digest()
        k = _k(b - a)
        return hashlib.sha256(b"\x01" + mth(a, a + k) + mth(a + k, b)).digest()

    def path(m: int, a: int, b: int) -> list[bytes]:
        if b - a == 1:
            return []
        k = _k(b - a)
        if m < k:
            return [*path(m, a, a + k), mth(a + k, b)]
        return [*path(m - k, a + k, b), mth(a, a + k)]

    def subproof(m: int, a: int, b: int, complete: bool) -> list[bytes]:
        if m == b - a:
            return [] if complete else [mth(a, b)]
        k = _k(b - a)
        if m <= k:
            return [*subproof(m, a, a + k, complete), mth(a + k, b)]
        return [*subproof(m - k, a + k, b, False), mth(a, a + k)]

    def inclusion(m: int, n: int) -> list[bytes]:  # type: ignore[return]
        return path(m, 0, n)

    def consistency(m: int, n: int) -> list[bytes]:
        return subproof(m, 0, n, True)

    return mth, inclusion, consistency  # type: ignore[return-value]


def stored_nodes(entries: list[bytes]) -> dict[NodeKey, bytes]:
    """The complete subtrees, appended one leaf at a time as audit_trees_extend does."""
    nodes: dict[NodeKey, bytes] = {}
    for size, entry in enumerate(entries):
        h, i, level = leaf_hash(entry), size, 0
        nodes[(0, i)] = h
        while i % 2 == 1:
            h = node_hash(nodes[(level, i - 1)], h)
            level, i = level + 1, i // 2
            nodes[(level, i)] = h
    return nodes


def _entries(n: int, rng: random.Random) -> list[bytes]:
    return [rng.randbytes(32) for _ in range(n)]


SIZES = [*range(1, 18), 31, 32, 33, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025, 2000]
_RNG = random.Random(9162)
SIZES += sorted(_RNG.sample(range(2, 2000), 6))


class TestAgainstTheReference:
    @pytest.mark.parametrize("size", SIZES)
    def test_every_inclusion_proof_and_root(self, size: int) -> None:
        entries = _entries(size, random.Random(size))
        mth, inclusion, _ = reference(entries)
        nodes = stored_nodes(entries)
        root = root_of(size, nodes)
        assert root == mth(0, size)
        for index in range(size):
            ranges = inclusion_ranges(index, size)
            assert nodes_for(ranges) <= nodes.keys()
            proof = hashes_of(ranges, nodes)
            assert proof == inclusion(index, size)
            verify_inclusion(index, size, leaf_hash(entries[index]), proof, root)

    @pytest.mark.parametrize("size", SIZES)
    def test_every_consistency_proof_from_every_older_size(self, size: int) -> None:
        entries = _entries(size, random.Random(size))
        mth, _, consistency = reference(entries)
        nodes = stored_nodes(entries)
        for old in range(1, size + 1):
            proof = hashes_of(consistency_ranges(old, size), nodes)
            assert proof == consistency(old, size)
            verify_consistency(old, size, mth(0, old), mth(0, size), proof)

    @pytest.mark.parametrize("size", [2, 3, 5, 8, 13, 100, 257])
    def test_a_changed_leaf_proof_index_or_root_is_refused(self, size: int) -> None:
        entries = _entries(size, random.Random(size))
        nodes = stored_nodes(entries)
        root = root_of(size, nodes)
        for index in range(size):
            proof = hashes_of(inclusion_ranges(index, size), nodes)
            leaf = leaf_hash(entries[index])
            bad = [
                (index, size, leaf_hash(b"edited"), proof, root),
                ((index + 1) % size, size, leaf, proof, root),
                (index, size, leaf, proof, hashlib.sha256(b"another").digest()),
                (index, size, leaf, [*proof, root], root),
                (index, size + 1 if size & (size - 1) == 0 else size * 2, leaf, proof, root),
            ]
            if proof:
                bad.append((index, size, leaf, proof[:-1], root))
                flipped = bytes([proof[0][0] ^ 8]) + proof[0][1:]
                bad.append((index, size, leaf, [flipped, *proof[1:]], root))
            for case in bad:
                with pytest.raises(ProofInvalid):
                    verify_inclusion(*case)

    @pytest.mark.parametrize("size", [2, 3, 5, 8, 13, 100])
    def test_a_rewritten_history_is_not_consistent(self, size: int) -> None:
        entries = _entries(size + 3, random.Random(size))
        nodes = stored_nodes(entries)
        for old in range(1, size + 1):
            rewritten = list(entries)
            rewritten[old - 1] = b"rewritten"
            other = stored_nodes(rewritten)
            proof = hashes_of(consistency_ranges(old, size + 3), other)
            with pytest.raises(ProofInvalid):
                verify_consistency(
                    old, size + 3, root_of(old, nodes), root_of(size + 3, other), proof
                )

    def test_the_frontier_gives_every_roots(self) -> None:
        entries = _entries(300, random.Random(3))
        mth, _, _ = reference(entries)
        frontier = Frontier()
        for size, entry in enumerate(entries, 1):
            frontier.append(leaf_hash(entry))
            assert (frontier.size, frontier.root()) == (size, mth(0, size))

    def test_two_roots_for_one_size_are_refused(self) -> None:
        one, two = hashlib.sha256(b"1").digest(), hashlib.sha256(b"2").digest()
        with pytest.raises(ProofInvalid, match="different roots"):
            verify_consistency(4, 4, one, two, [])


class TestPublishedVectors:
    """transparency-dev/merkle's vectors (tests/audit/data/rfc6962_vectors.json)."""

    def _nodes(self) -> dict[NodeKey, bytes]:
        return stored_nodes([bytes.fromhex(x) for x in VECTORS["leaves"]])

    def test_every_complete_subtree_and_root(self) -> None:
        nodes = self._nodes()
        for level, row in enumerate(VECTORS["nodes"]):
            for index, expected in enumerate(row):
                assert nodes[(level, index)].hex() == expected
        for size, expected in enumerate(VECTORS["roots"], 1):
            assert root_of(size, nodes).hex() == expected

    @pytest.mark.parametrize(
        "case", VECTORS["inclusion"], ids=lambda c: f"{c['index']}-{c['size']}"
    )
    def test_inclusion_proofs(self, case: dict[str, object]) -> None:
        index, size = case["index"], case["size"]
        assert isinstance(index, int) and isinstance(size, int)
        proof = hashes_of(inclusion_ranges(index, size), self._nodes())
        assert [p.hex() for p in proof] == case["proof"]
        leaf = leaf_hash(bytes.fromhex(VECTORS["leaves"][index]))
        verify_inclusion(index, size, leaf, proof, bytes.fromhex(VECTORS["roots"][size - 1]))

    @pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: f"{c['from']}-{c['to']}")
    def test_consistency_proofs(self, case: dict[str, object]) -> None:
        old, new = case["from"], case["to"]
        assert isinstance(old, int) and isinstance(new, int)
        proof = hashes_of(consistency_ranges(old, new), self._nodes())
        assert [p.hex() for p in proof] == case["proof"]
        roots = VECTORS["roots"]
        verify_consistency(
            old, new, bytes.fromhex(roots[old - 1]), bytes.fromhex(roots[new - 1]), proof
        )
