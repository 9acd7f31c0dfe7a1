"""Signed checkpoints of a scope's Merkle tree: C2SP `tlog-checkpoint` in `signed-note` form.

A checkpoint is a note whose text is three lines, each ending in a newline:

    bff-audit/<scope key id>/<scope name>      the origin: this scope's log
    <tree size>                                 decimal
    <root hash>                                 standard base64 of the 32-byte root

then an empty line and one signature line per signer, `— <name> <base64(key hash ||
signature)>`, the signature an Ed25519 signature of the text. The service signs with its
digest key, named by its kid (GET /.well-known/audit-keys); the key hash is the first 4
bytes of SHA-256(name || "\\n" || 0x01 || public key), as C2SP's Ed25519 note keys have.
The scope name is the keyed hash the digests use (`ScopeNames`): a checkpoint tells nothing
of which scope it is to someone without the name, and nothing of the other scopes.

Pure: the issuer signs with it (app/audit/trees.py), the offline checks read with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.audit.signing import KeyRing

ORIGIN_PREFIX = "bff-audit"
_DASH = "\u2014 "
_ED25519 = b"\x01"
_NAME = re.compile(r"[^\s+]+")
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")


class CheckpointInvalid(ValueError):
    """A checkpoint that is not well formed or not signed by a known key; says why."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    text: str  # the signed text (origin, size, root lines)
    signer: str  # the known key that signed it


def origin_of(key_id: str, scope_name: str) -> str:
    return f"{ORIGIN_PREFIX}/{key_id}/{scope_name}"


def key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public).digest()[:4]


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def _raw_public(jwk: Mapping[str, str]) -> bytes:
    x = jwk["x"]
    return base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))


def sign_checkpoint(ring: KeyRing, origin: str, size: int, root: bytes) -> str:
    """The signed note of the tree of `size` and `root`, signed by the ring's signing key."""
    text = checkpoint_text(origin, size, root)
    signature = ring.sign_bytes(text.encode())
    stamp = key_hash(ring.kid, _raw_public(ring.signer_jwk)) + signature
    return f"{text}\n{_DASH}{ring.kid} {base64.b64encode(stamp).decode()}\n"


def _public_bytes(key: Any) -> bytes:
    raw: bytes = key.get_public_key().public_bytes_raw()
    return raw


def verify_checkpoint(note: str, keys: Mapping[str, Any]) -> Checkpoint:
    """Read a signed checkpoint and check it carries a valid signature by one of `keys` (a
    JWKS's keys by kid, `load_public_keys`); other signatures (witnesses') are skipped."""
    if not isinstance(note, str) or "\n\n" not in note or not note.endswith("\n"):
        raise CheckpointInvalid("not a signed note (text, an empty line, signature lines)")
    text, _, signatures = note.partition("\n\n")
    text += "\n"
    lines = text.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointInvalid("a checkpoint has an origin, a size and a root hash")
    origin, size_line, root_line = lines[:3]
    if not origin or not _SIZE.fullmatch(size_line):
        raise CheckpointInvalid("the origin or the tree size line is malformed")
    try:
        root = base64.b64decode(root_line, validate=True)
    except (binascii.Error, ValueError):
        root = b""
    if len(root) != 32:
        raise CheckpointInvalid("the root hash is not 32 bytes of base64")
    signer = None
    for line in signatures.split("\n")[:-1]:
        if not line.startswith(_DASH) or line.count(" ") != 2:
            raise CheckpointInvalid("a signature line is malformed")
        name, stamp_text = line[len(_DASH) :].split(" ")
        key = keys.get(name)
        if key is None or not _NAME.fullmatch(name):
            continue
        try:
            stamp = base64.b64decode(stamp_text, validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointInvalid(f"the signature by {name[:64]!r} is not base64") from None
        public = _public_bytes(key)
        if len(stamp) != 68 or stamp[:4] != key_hash(name, public):
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(stamp[4:], text.encode())
        except InvalidSignature:
            raise CheckpointInvalid(f"the signature by {name[:64]!r} does not hold") from None
        signer = name
    if signer is None:
        raise CheckpointInvalid("no signature by a known key")
    return Checkpoint(origin, int(size_line), root, text, signer)


# --- Witness cosignatures (C2SP tlog-cosignature, cosignature/v1) ------------------------------
# A witness signs "cosignature/v1\ntime <T>\n" followed by the checkpoint's text, T its
# clock in seconds; its line is `— <name> <base64(key hash || T as 8 bytes || signature)>`,
# the key hash SHA-256(name || "\n" || 0x04 || public key)[:4].

_COSIGNATURE = b"\x04"


def witness_key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _COSIGNATURE + public).digest()[:4]


def _cosigned(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()


def cosign(key: Ed25519PrivateKey, name: str, text: str, timestamp: int) -> str:
    """A witness's cosignature line for the checkpoint whose signed text is `text`."""
    public = key.public_key().public_bytes_raw()
    stamp = (
        witness_key_hash(name, public)
        + timestamp.to_bytes(8, "big")
        + key.sign(_cosigned(text, timestamp))
    )
    return f"{_DASH}{name} {base64.b64encode(stamp).decode()}"


def verify_cosignature(line: str, text: str, witnesses: Mapping[str, bytes]) -> str:
    """The witness (one of `witnesses`, public keys by name) whose valid cosignature of the
    checkpoint text `text` `line` is; `CheckpointInvalid` otherwise."""
    if not isinstance(line, str) or not line.startswith(_DASH) or line.count(" ") != 2:
        raise CheckpointInvalid("not a signature line: '— NAME BASE64'")
    name, stamp_text = line[len(_DASH) :].split(" ")
    public = witnesses.get(name)
    if public is None:
        raise CheckpointInvalid("not a witness this service accepts (AUDIT_WITNESS_KEYS)")
    try:
        stamp = base64.b64decode(stamp_text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointInvalid("the signature is not base64") from None
    if len(stamp) != 76 or stamp[:4] != witness_key_hash(name, public):
        raise CheckpointInvalid("not a cosignature by that witness's key")
    timestamp = int.from_bytes(stamp[4:12], "big")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(stamp[12:], _cosigned(text, timestamp))
    except InvalidSignature:
        raise CheckpointInvalid("the cosignature does not hold for this checkpoint") from None
    return name
