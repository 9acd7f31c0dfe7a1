"""RFC 9162 Merkle trees over a scope's audit events: hashing, proofs, their checks.

A leaf is an event's chained hash (app/audit/chain.py), so the tree and the chain agree:
leaf hash `SHA-256(0x00 || event hash)`, node `SHA-256(0x01 || left || right)`. The
database stores every complete subtree (migrations/0015), as a node keyed by its level and
index: the node (L, i) covers leaves [i * 2^L, (i + 1) * 2^L). A proof is a list of subtree
hashes (RFC 9162, 2.1.3.1 and 2.1.4.1); each subtree that is not itself complete is made of
the complete ones its size's binary digits name. So a proof is computed in two steps:
`*_nodes` says which stored nodes it needs (O(log^2 n) at most, one query), then
`*_proof` builds it from them. The checks (`verify_inclusion`, `verify_consistency`,
RFC 9162 2.1.3.2 and 2.1.4.2) need no database. Pure: no database, no HTTP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

NodeKey = tuple[int, int]  # (level, index)
Range = tuple[int, int]  # leaves [start, end)


class ProofInvalid(ValueError):
    """A proof that does not hold; the message says why."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def pieces(start: int, end: int) -> list[NodeKey]:
    """The complete subtrees that make up leaves [start, end) of a tree, left to right.
    For the ranges a proof names (a multiple of a power of two at least their size), they
    are the size's binary digits, largest first."""
    keys: list[NodeKey] = []
    while start < end:
        level = (end - start).bit_length() - 1
        while start % (1 << level):
            level -= 1
        keys.append((level, start >> level))
        start += 1 << level
    return keys


def subtree_hash(start: int, end: int, nodes: Mapping[NodeKey, bytes]) -> bytes:
    """MTH(leaves [start, end)) from the stored complete subtrees."""
    hashes = [nodes[key] for key in pieces(start, end)]
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = node_hash(left, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The subtrees whose hashes make PATH(index, D[0:size]), leaf side first."""
    if not 0 <= index < size:
        raise ValueError("the index must lie in the tree")
    ranges: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(old: int, new: int) -> list[Range]:
    """The subtrees whose hashes make PROOF(old, D[0:new]) (RFC 9162 2.1.4.1)."""
    if not 0 < old <= new:
        raise ValueError("the old size must be at least 1 and at most the new one")
    ranges: list[Range] = []
    start, end, m, complete = 0, new, old, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def nodes_for(ranges: Iterable[Range]) -> set[NodeKey]:
    """Every stored node the hashes of `ranges` need."""
    return {key for start, end in ranges for key in pieces(start, end)}


def hashes_of(ranges: Sequence[Range], nodes: Mapping[NodeKey, bytes]) -> list[bytes]:
    return [subtree_hash(start, end, nodes) for start, end in ranges]


def root_of(size: int, nodes: Mapping[NodeKey, bytes]) -> bytes:
    return subtree_hash(0, size, nodes)


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 2.1.3.2: `leaf` (a leaf hash) is leaf `index` of the tree of `size` whose
    root is `root`; `ProofInvalid` otherwise."""
    if not 0 <= index < size:
        raise ProofInvalid(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofInvalid("the proof is longer than the tree allows")
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofInvalid("the proof is shorter than the tree needs")
    if r != root:
        raise ProofInvalid("the proof does not lead to the checkpoint's root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: the tree of `new_size` and `new_root` extends the tree of
    `old_size` and `old_root`; `ProofInvalid` otherwise."""
    if not 0 < old_size <= new_size:
        raise ProofInvalid(f"sizes {old_size} and {new_size}: the old must be 1 to the new")
    if old_size == new_size:
        if proof:
            raise ProofInvalid("two trees of the same size need an empty proof")
        if old_root != new_root:
            raise ProofInvalid(f"two trees of size {old_size} with different roots")
        return
    if not proof:
        raise ProofInvalid("the proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root starts the path
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn % 2 == 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofInvalid("the proof is longer than the trees allow")
        if fn % 2 == 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofInvalid("the proof is shorter than the trees need")
    if fr != old_root:
        raise ProofInvalid("the proof does not lead to the old checkpoint's root")
    if sr != new_root:
        raise ProofInvalid("the proof does not lead to the new checkpoint's root")


class Frontier:
    """A tree's root as leaves arrive, in O(log n) memory: the hashes of its complete
    subtrees, largest first (the size's binary digits), as the offline checks of archives
    need it."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[bytes] = []

    def append(self, leaf: bytes) -> None:
        """Add a leaf hash."""
        h, n = leaf, self.size
        while n & 1:
            h = node_hash(self._stack.pop(), h)
            n >>= 1
        self._stack.append(h)
        self.size += 1

    def root(self) -> bytes:
        acc = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            acc = node_hash(left, acc)
        return acc
