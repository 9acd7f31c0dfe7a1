"""What a digest issuer remembers: the last digest it signed, or saw continue from one it
knew (`Anchor`), and the state file that keeps it across restarts (AUDIT_SIGNER_STATE_FILE).

The file lives with the signing key, away from the database: someone who can rewrite the
database (the migrations owner, a superuser) can delete digests, but not this file, so the
issuer notices that the digests table no longer holds what it signed and refuses to sign
over it (app/audit/digests.py, docs/audit.md). Pure file I/O, no database.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson

_HEX32 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Anchor:
    """A digest by its number and the SHA-256 of its JWS text: enough to recognise it."""

    number: int
    hash: bytes

    def __str__(self) -> str:
        return f"digest {self.number} ({self.hash.hex()[:16]}…)"


class StateUnreadable(Exception):
    """A state file that exists and is not one the issuer wrote; the message says why."""


def load_anchor(path: Path) -> Anchor | None:
    """The anchor in the state file at `path`; None when there is no file yet.

    Anything else (empty, malformed, unreadable) is `StateUnreadable`: the issuer cannot
    know what it signed, and must not guess.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateUnreadable(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        body = orjson.loads(raw)
        number, hash_ = body["number"], body["hash"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise StateUnreadable(f"{path}: not a digest issuer's state file") from None
    valid_number = isinstance(number, int) and not isinstance(number, bool) and number >= 1
    if not valid_number or not isinstance(hash_, str) or not _HEX32.fullmatch(hash_):
        raise StateUnreadable(f"{path}: not a digest issuer's state file")
    return Anchor(number, bytes.fromhex(hash_))


def save_anchor(path: Path, anchor: Anchor) -> None:
    """Replace the state file atomically: a temporary file beside it, written and synced,
    renamed over it, and the directory synced, so a crash leaves the old file or the new
    one, never a part of either. Copies sharing the file each write a name of their own."""
    body = orjson.dumps({"number": anchor.number, "hash": anchor.hash.hex()}) + b"\n"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
