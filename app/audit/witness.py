"""A witness of one scope's Merkle tree: it cosigns a checkpoint only when it extends the
last one it cosigned, so the log cannot show it (or anyone who checks its cosignatures) two
histories.

    python -m app audit witness --log URL --keys KEYS.json --state DIR --token-file FILE

Each run: fetch the latest checkpoint (GET /api/audit-events/checkpoint), check its
signature with the pinned keys; with the last checkpoint it cosigned (DIR/checkpoint.txt)
fetch the consistency proof between the two and check it (RFC 9162); only then cosign
(C2SP cosignature/v1, with its own Ed25519 key, DIR/witness.key, made on the first run),
send the cosignature (POST /api/audit-events/checkpoint/cosignatures) and keep the new
checkpoint. A checkpoint that is not an extension (the same size with another root, a
smaller tree, a proof that does not hold, another origin) is refused: `WitnessRefused`,
naming both heads. The token (FILE) is a `read:audit_events` token of the scope.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.audit.checkpoints import Checkpoint, CheckpointInvalid, cosign, verify_checkpoint
from app.audit.merkle import ProofInvalid, verify_consistency

CHECKPOINT = "/api/audit-events/checkpoint"
CONSISTENCY = "/api/audit-events/consistency"
COSIGNATURES = "/api/audit-events/checkpoint/cosignatures"
KEY_FILE = "witness.key"
STATE_FILE = "checkpoint.txt"


class WitnessRefused(Exception):
    """Nothing was cosigned; the message says why (both heads, for a fork)."""


@dataclass(frozen=True, slots=True)
class Cosigned:
    checkpoint: Checkpoint
    previous: Checkpoint | None
    witness: str


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def load_or_make_key(state: Path, name: str) -> tuple[str, Ed25519PrivateKey, bool]:
    """The witness's key, NAME:SEED in DIR/witness.key; made (mode 0600) when absent.
    (name, key, made now)."""
    path = state / KEY_FILE
    if path.exists():
        text = path.read_text().strip()
        found, _, seed = text.partition(":")
        raw = base64.urlsafe_b64decode(seed + "=" * (-len(seed) % 4))
        return found, Ed25519PrivateKey.from_private_bytes(raw), False
    key = Ed25519PrivateKey.generate()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"{name}:{_b64url(key.private_bytes_raw())}\n")
    return name, key, True


def public_entry(name: str, key: Ed25519PrivateKey) -> str:
    """The witness's AUDIT_WITNESS_KEYS entry, NAME:X."""
    return f"{name}:{_b64url(key.public_key().public_bytes_raw())}"


def _head(checkpoint: Checkpoint) -> str:
    return f"size {checkpoint.size}, root {base64.b64encode(checkpoint.root).decode()}"


async def _get(http: httpx.AsyncClient, path: str, token: str, **params: Any) -> httpx.Response:
    response = await http.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        raise WitnessRefused(f"GET {path}: HTTP {response.status_code}")
    return response


async def witness_once(
    http: httpx.AsyncClient, token: str, keys: dict[str, Any], state: Path, name: str
) -> Cosigned:
    """One run against the log `http` reaches (its base URL); `WitnessRefused` when
    nothing may be cosigned."""
    witness, key, _ = load_or_make_key(state, name)
    note = (await _get(http, CHECKPOINT, token)).text
    try:
        latest = verify_checkpoint(note, keys)
    except CheckpointInvalid as exc:
        raise WitnessRefused(f"the log's checkpoint: {exc}") from None
    previous = None
    saved = state / STATE_FILE
    if saved.exists():
        try:
            previous = verify_checkpoint(saved.read_text(), keys)
        except CheckpointInvalid as exc:
            raise WitnessRefused(f"{saved}: {exc}") from None
        _check_extends(previous, latest)
        if latest.size > previous.size:
            body = (
                await _get(http, CONSISTENCY, token, **{"from": previous.size, "to": latest.size})
            ).json()
            try:
                proof = [base64.b64decode(h, validate=True) for h in body["proof"]]
                verify_consistency(previous.size, latest.size, previous.root, latest.root, proof)
            except (ProofInvalid, KeyError, TypeError, ValueError) as exc:
                raise WitnessRefused(
                    f"the log's checkpoint does not extend the one this witness cosigned "
                    f"({exc}): cosigned {_head(previous)}; now {_head(latest)}"
                ) from None
    line = cosign(key, witness, latest.text, int(time.time()))
    response = await http.post(
        COSIGNATURES,
        json={"size": latest.size, "cosignature": line},
        headers={"Authorization": f"Bearer {token}"},
    )
    if response.status_code != 200:
        raise WitnessRefused(f"the log refused the cosignature: HTTP {response.status_code}")
    temporary = saved.with_suffix(".tmp")
    temporary.write_text(note)
    temporary.replace(saved)
    return Cosigned(latest, previous, witness)


def _check_extends(previous: Checkpoint, latest: Checkpoint) -> None:
    if latest.origin != previous.origin:
        raise WitnessRefused(
            f"the log's checkpoint is of another log ({latest.origin}, not {previous.origin})"
        )
    if latest.size < previous.size:
        raise WitnessRefused(
            f"the log's tree shrank: cosigned {_head(previous)}; now {_head(latest)}"
        )
    if latest.size == previous.size and latest.root != previous.root:
        raise WitnessRefused(
            f"FORK: two trees of {latest.size} events with different roots: cosigned "
            f"{_head(previous)}; now {_head(latest)}"
        )
