"""Checking a single event's proof, or two checkpoints' consistency, offline.

    python -m app audit verify-inclusion --event EVENT.json --proof PROOF.json \\
        --checkpoint CHECKPOINT.txt --keys KEYS.json
    python -m app audit verify-consistency --old OLD.txt --new NEW.txt --proof PROOF.json \\
        --keys KEYS.json

EVENT is one line of the NDJSON export (or one item of GET /api/audit-events), PROOF the
body of GET /api/audit-events/{id}/inclusion or /consistency, CHECKPOINT the body of GET
/api/audit-events/checkpoint, KEYS the pinned JWKS (GET /.well-known/audit-keys). The
event's hash is recomputed from its fields (an edited event fails here), its leaf is
SHA-256(0x00 || hash), and the proof must lead from it to the signed root (RFC 9162).
Every failure raises `ProofRejected` with the reason. No database, no service.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import orjson

from app.audit.chain import canonical_detail, event_hash
from app.audit.checkpoints import Checkpoint, CheckpointInvalid, verify_checkpoint
from app.audit.evidence import ExportInvalid, exported_event, load_keys
from app.audit.merkle import ProofInvalid, leaf_hash, verify_consistency, verify_inclusion


class ProofRejected(Exception):
    """What does not hold, or cannot be read; the message says which file and why."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ProofRejected(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _json(path: Path) -> dict[str, Any]:
    try:
        value = orjson.loads(_read(path))
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ProofRejected(f"{path}: not a JSON object")
    return value


def _keys(path: Path) -> dict[str, Any]:
    try:
        return load_keys(path)
    except ExportInvalid as exc:
        raise ProofRejected(str(exc)) from None


def _checkpoint(path: Path, keys: dict[str, Any]) -> Checkpoint:
    try:
        text = _read(path).decode()
    except UnicodeDecodeError:
        raise ProofRejected(f"{path}: not UTF-8 text") from None
    try:
        return verify_checkpoint(text, keys)
    except CheckpointInvalid as exc:
        raise ProofRejected(f"{path}: {exc}") from None


def _hashes(path: Path, value: Any) -> list[bytes]:
    if not isinstance(value, list):
        raise ProofRejected(f"{path}: the proof's hashes must be a list")
    try:
        hashes = [base64.b64decode(h, validate=True) for h in value]
    except (binascii.Error, ValueError, TypeError):
        raise ProofRejected(f"{path}: a proof hash is not base64") from None
    if any(len(h) != 32 for h in hashes):
        raise ProofRejected(f"{path}: a proof hash is not 32 bytes")
    return hashes


def _count(path: Path, body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofRejected(f"{path}: {name} must be an integer >= 0")
    return value


def check_inclusion(event: Path, proof: Path, checkpoint: Path, keys: Path) -> str:
    """The verdict's message when the event is in the checkpoint's tree; else
    `ProofRejected`."""
    ring = _keys(keys)
    signed = _checkpoint(checkpoint, ring)
    try:
        row = exported_event(event, 1, _json(event))
        row["detail"] = canonical_detail(row["detail"])
    except (ExportInvalid, ValueError) as exc:
        raise ProofRejected(
            str(exc) if isinstance(exc, ExportInvalid) else f"{event}: {exc}"
        ) from None
    if event_hash(row) != row["hash"]:
        raise ProofRejected(f"{event}: the event's fields do not give its hash (edited?)")
    body = _json(proof)
    index, size = _count(proof, body, "leaf_index"), _count(proof, body, "tree_size")
    if size != signed.size:
        raise ProofRejected(
            f"the proof is for a tree of {size} events, the checkpoint for {signed.size}"
        )
    try:
        verify_inclusion(
            index, size, leaf_hash(row["hash"]), _hashes(proof, body.get("audit_path")), signed.root
        )
    except ProofInvalid as exc:
        raise ProofRejected(f"event {row['id']} is not in the checkpoint's tree: {exc}") from None
    return (
        f"event {row['id']} (seq {row['seq']}) is leaf {index} of the tree of {size} events "
        f"signed by {signed.signer} ({signed.origin})"
    )


def check_consistency(old: Path, new: Path, proof: Path, keys: Path) -> str:
    """The verdict's message when the new checkpoint's tree extends the old one's; else
    `ProofRejected`."""
    ring = _keys(keys)
    first, second = _checkpoint(old, ring), _checkpoint(new, ring)
    if first.origin != second.origin:
        raise ProofRejected(f"the checkpoints are of two logs: {first.origin}, {second.origin}")
    body = _json(proof)
    sizes = (_count(proof, body, "from"), _count(proof, body, "to"))
    if sizes != (first.size, second.size):
        raise ProofRejected(
            f"the proof is from {sizes[0]} to {sizes[1]}, the checkpoints are of "
            f"{first.size} and {second.size} events"
        )
    try:
        verify_consistency(
            first.size, second.size, first.root, second.root, _hashes(proof, body.get("proof"))
        )
    except ProofInvalid as exc:
        raise ProofRejected(f"the new checkpoint does not extend the old one: {exc}") from None
    return (
        f"the tree of {second.size} events extends the tree of {first.size} "
        f"({first.origin}, signed by {second.signer})"
    )
