"""The scopes' Merkle trees in the database: extending them with signed checkpoints, and
reading proofs from the stored nodes (migrations/0015, app/audit/merkle.py).

The digest issuer extends every tree up to the watermark it signs, in its own transaction
and under the digest lock, and signs a checkpoint for each tree that grew
(`checkpoint_trees`): an event is provable once a checkpoint covers it, at most one digest
interval after it was recorded, and the append path pays nothing. `extend_trees` brings a
log's existing events in by slices (`python -m app audit build-trees`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from app.audit.checkpoints import origin_of, sign_checkpoint
from app.audit.merkle import (
    NodeKey,
    consistency_ranges,
    hashes_of,
    inclusion_ranges,
    nodes_for,
    pieces,
    root_of,
)
from app.audit.signing import KeyRing, ScopeNames

_HAS_TREES = "SELECT to_regprocedure('audit_trees_extend(bigint, bigint)')"
_EXTEND = "SELECT scope, size FROM audit_trees_extend($1, $2)"
# Every grown tree's checkpoint in one statement (the function checks each as before).
_APPEND = """
SELECT audit_checkpoints_append(c.scope, c.size, c.root, $4, c.note)
FROM unnest($1::text[], $2::bigint[], $3::bytea[], $5::text[]) AS c(scope, size, root, note)
"""
# The nodes of several trees at once: (scope, level, idx) triples.
_NODES_OF = """
SELECT n.scope, n.level, n.idx, n.hash
FROM unnest($1::text[], $2::smallint[], $3::bigint[]) AS k(scope, level, idx)
JOIN audit_tree_nodes n ON n.scope = k.scope AND n.level = k.level AND n.idx = k.idx
"""
# Trees checkpointed per statement: their roots' nodes (at most 64 each) in one query.
_CHECKPOINT_BATCH = 500
_NODES = """
SELECT n.level, n.idx, n.hash
FROM unnest($2::smallint[], $3::bigint[]) AS k(level, idx)
JOIN audit_tree_nodes n ON n.scope = $1 AND n.level = k.level AND n.idx = k.idx
"""
_LATEST = """
SELECT size, root, note, digest_number, issued_at FROM audit_checkpoints
WHERE scope = $1 ORDER BY size DESC LIMIT 1
"""
# Trees larger than their last checkpoint: grown now, or brought in by build-trees.
_UNSIGNED = """
SELECT t.scope, t.size FROM audit_trees t
WHERE t.size > coalesce((SELECT max(c.size) FROM audit_checkpoints c WHERE c.scope = t.scope), 0)
ORDER BY t.scope
"""
_COSIGNATURES = """
SELECT line FROM audit_checkpoint_cosignatures WHERE scope = $1 AND size = $2 ORDER BY witness
"""
_RECENT = """
SELECT c.size, c.digest_number, c.issued_at,
       coalesce(array_agg(w.witness ORDER BY w.witness) FILTER (WHERE w.witness IS NOT NULL),
                '{}') AS witnesses
FROM (SELECT size, digest_number, issued_at FROM audit_checkpoints
      WHERE scope = $1 ORDER BY size DESC LIMIT $2) c
LEFT JOIN audit_checkpoint_cosignatures w ON w.scope = $1 AND w.size = c.size
GROUP BY c.size, c.digest_number, c.issued_at
ORDER BY c.size DESC
"""
_AT = "SELECT size, root, note FROM audit_checkpoints WHERE scope = $1 AND size = $2"
_COSIGN = "SELECT audit_cosignatures_append($1, $2, $3, $4)"
# By the event's id alone, so the planner always takes the id index: with `AND scope = $2`
# it could walk the scope's leaves by the primary key instead (seen: 21 ms at 2 million
# events, before the table's first ANALYZE). The scope is checked on the one row found.
_LEAF = "SELECT idx, seq, scope FROM audit_tree_leaves WHERE id = $1"


class ProofUnavailable(Exception):
    """No proof for what was asked: `field` names the parameter at fault (None: the event
    is not in a checkpointed tree yet), `message` says why."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class InclusionProof:
    leaf_index: int
    tree_size: int
    seq: int
    leaf_hash: bytes
    path: list[bytes]


async def fetch_nodes(
    conn: asyncpg.Connection, scope: str, keys: set[NodeKey]
) -> dict[NodeKey, bytes]:
    ordered = sorted(keys)
    rows = await conn.fetch(_NODES, scope, [k[0] for k in ordered], [k[1] for k in ordered])
    nodes = {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}
    if len(nodes) != len(ordered):
        raise RuntimeError(f"the tree of a scope lacks {len(ordered) - len(nodes)} node(s)")
    return nodes


async def tree_root(conn: asyncpg.Connection, scope: str, size: int) -> bytes:
    return (await tree_roots(conn, [(scope, size)]))[0]


async def tree_roots(conn: asyncpg.Connection, trees: list[tuple[str, int]]) -> list[bytes]:
    """The roots of several trees (scope, size) from their stored nodes, in one query: the
    issuer checkpoints every tree that grew, a thousand scopes' in one digest."""
    wanted = [(scope, key) for scope, size in trees for key in pieces(0, size)]
    rows = await conn.fetch(
        _NODES_OF, [w[0] for w in wanted], [w[1][0] for w in wanted], [w[1][1] for w in wanted]
    )
    found: dict[str, dict[NodeKey, bytes]] = {scope: {} for scope, _ in trees}
    for r in rows:
        found[r["scope"]][(r["level"], r["idx"])] = bytes(r["hash"])
    if len(rows) != len(wanted):
        raise RuntimeError(f"the trees lack {len(wanted) - len(rows)} node(s)")
    return [root_of(size, found[scope]) for scope, size in trees]


async def extend_trees(
    conn: asyncpg.Connection, upto: int, limit: int | None = None
) -> list[tuple[str, int]]:
    """Extend the trees with events at or below the watermark `upto` (at most `limit`):
    (scope, new size) of each tree that grew."""
    rows = await conn.fetch(_EXTEND, upto, limit)
    return [(r["scope"], r["size"]) for r in rows]


async def checkpoint_trees(
    conn: asyncpg.Connection, ring: KeyRing, names: ScopeNames, digest: int, watermark: int
) -> int:
    """In the digest's transaction, after it is stored: extend every tree up to its
    watermark and store a checkpoint of each that is larger than its last; how many. A
    database not yet migrated to 0015 has no trees: the digest is issued without them."""
    if await conn.fetchval(_HAS_TREES) is None:
        return 0
    await extend_trees(conn, watermark)
    grown = [(str(r["scope"]), int(r["size"])) for r in await conn.fetch(_UNSIGNED)]
    for start in range(0, len(grown), _CHECKPOINT_BATCH):
        batch = grown[start : start + _CHECKPOINT_BATCH]
        roots = await tree_roots(conn, batch)
        notes = [
            sign_checkpoint(ring, origin_of(names.key_id, names.current(scope)), size, root)
            for (scope, size), root in zip(batch, roots, strict=True)
        ]
        await conn.execute(
            _APPEND, [s for s, _ in batch], [z for _, z in batch], roots, digest, notes
        )
    return len(grown)


async def latest_checkpoint(conn: asyncpg.Connection, scope: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(_LATEST, scope)
    return row


async def served_checkpoint(conn: asyncpg.Connection, scope: str) -> tuple[int, str] | None:
    """The latest checkpoint of `scope` as served: its size, and its note with the
    witnesses' cosignature lines after the service's signature."""
    latest = await latest_checkpoint(conn, scope)
    if latest is None:
        return None
    lines = [r["line"] for r in await conn.fetch(_COSIGNATURES, scope, latest["size"])]
    return int(latest["size"]), latest["note"] + "".join(f"{line}\n" for line in lines)


async def recent_checkpoints(
    conn: asyncpg.Connection, scope: str, limit: int
) -> list[asyncpg.Record]:
    """The `limit` latest checkpoints of `scope`, largest first: `size`, `digest_number`,
    `issued_at`, and `witnesses` (the names of those whose cosignature is stored)."""
    return list(await conn.fetch(_RECENT, scope, limit))


async def checkpoint_at(conn: asyncpg.Connection, scope: str, size: int) -> str | None:
    """The note of `scope`'s checkpoint of `size` (None: there is none)."""
    row = await conn.fetchrow(_AT, scope, size)
    return str(row["note"]) if row is not None else None


async def store_cosignature(
    conn: asyncpg.Connection, scope: str, size: int, witness: str, line: str
) -> str:
    """Keep a checked cosignature: "stored", or "already stored"."""
    return str(await conn.fetchval(_COSIGN, scope, size, witness, line))


async def _checkpointed_size(conn: asyncpg.Connection, scope: str) -> int:
    latest = await latest_checkpoint(conn, scope)
    return int(latest["size"]) if latest is not None else 0


async def inclusion_proof(
    conn: asyncpg.Connection, scope: str, event_id: uuid.UUID, size: int | None
) -> InclusionProof | None:
    """The proof that the event `event_id` of `scope` is in its tree of `size` (None: the
    latest checkpoint's); None when the scope has no such event; `ProofUnavailable` when
    the event or `size` lies beyond the checkpoints."""
    leaf = next((r for r in await conn.fetch(_LEAF, event_id) if r["scope"] == scope), None)
    if leaf is None:
        exists = await conn.fetchval(
            "SELECT true FROM audit_events WHERE id = $1 AND scope = $2 LIMIT 1", event_id, scope
        )
        if not exists:
            return None
        raise ProofUnavailable(None, "the event is not covered by a checkpoint yet")
    checkpointed = await _checkpointed_size(conn, scope)
    index = int(leaf["idx"])
    if index >= checkpointed:
        raise ProofUnavailable(None, "the event is not covered by a checkpoint yet")
    size = checkpointed if size is None else size
    if size > checkpointed:
        raise ProofUnavailable("size", f"beyond the latest checkpoint's tree size ({checkpointed})")
    if size <= index:
        raise ProofUnavailable("size", f"the event is leaf {index}: the tree must be larger")
    ranges = inclusion_ranges(index, size)
    needed = nodes_for(ranges) | {(0, index)}
    nodes = await fetch_nodes(conn, scope, needed)
    return InclusionProof(
        index, size, int(leaf["seq"]), nodes[(0, index)], hashes_of(ranges, nodes)
    )


async def consistency_proof(
    conn: asyncpg.Connection, scope: str, old: int, new: int
) -> list[bytes]:
    """The proof that `scope`'s tree of `new` leaves extends its tree of `old`."""
    checkpointed = await _checkpointed_size(conn, scope)
    if new > checkpointed:
        raise ProofUnavailable("to", f"beyond the latest checkpoint's tree size ({checkpointed})")
    if old > new:
        raise ProofUnavailable("from", "must be at most `to`")
    ranges = consistency_ranges(old, new)
    return hashes_of(ranges, await fetch_nodes(conn, scope, nodes_for(ranges)))
