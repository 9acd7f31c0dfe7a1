"""The files an auditor checks offline (app/audit/offline.py), read strictly: the events
export, the digests, the pinned keys and the digests they saved before (the anchors).

Anything that cannot be read (a malformed or truncated line, a keys file that is not a
JWKS, a digest line without what its version needs) raises `ExportInvalid`, naming the
file and the line. No database, no service.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from app.audit.chain import CONTENT_COLUMNS
from app.audit.signing import DigestInvalid, KeysInvalid, load_public_keys, verify_digest

_HEX64 = re.compile(r"[0-9a-f]{64}")
# The text fields of an exported event (app/audit/chain.py's CONTENT_COLUMNS hashes them).
_REQUIRED_TEXT = ("scope", "action", "crud", "outcome")
_NULLABLE_TEXT = (
    *("actor", "client_id", "session_id", "token_id", "source_ip", "user_agent"),
    *("outcome_reason", "entity_type", "entity_id", "request_id"),
)
assert {*_REQUIRED_TEXT, *_NULLABLE_TEXT} < {name for name, _ in CONTENT_COLUMNS}


class ExportInvalid(Exception):
    """An input file that cannot be read as an export; the message names file and line."""


def lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Each line of `path` with its number, from 1."""
    try:
        with path.open("rb") as handle:
            yield from enumerate(handle, 1)
    except OSError as exc:
        raise ExportInvalid(f"{path}: cannot read it ({exc.strerror or exc})") from None


def json_object(path: Path, number: int, line: bytes) -> dict[str, Any]:
    """Line `number` of `path` as a JSON object."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ExportInvalid(f"{path} line {number}: not a JSON object (truncated?)")
    return value


def load_keys(path: Path) -> dict[str, Any]:
    """The auditor's pinned keys: a JWKS of Ed25519 keys."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ExportInvalid(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return load_public_keys(orjson.loads(raw))
    except orjson.JSONDecodeError:
        raise ExportInvalid(f"{path}: not JSON") from None
    except KeysInvalid as exc:
        raise ExportInvalid(f"{path}: {exc}") from None


def load_anchors(path: Path, keys: dict[str, Any]) -> dict[int, tuple[bytes, int]]:
    """The digests the auditor saved (one per line, as fetched), checked with the pinned
    keys: (the hash of its JWS, its line) by number."""
    anchors: dict[int, tuple[bytes, int]] = {}
    for number, line in lines(path):
        jws = json_object(path, number, line).get("jws")
        if not isinstance(jws, str):
            raise ExportInvalid(f"{path} line {number}: no jws")
        try:
            digest = verify_digest(jws, keys)
        except DigestInvalid as exc:
            raise ExportInvalid(f"{path} line {number}: {exc}") from None
        kept = anchors.setdefault(digest.number, (digest.hash, number))
        if kept[0] != digest.hash:
            raise ExportInvalid(
                f"{path} line {number}: another digest {digest.number} than line {kept[1]}: "
                "the digests were rewritten before you saved the later one"
            )
    if not anchors:
        raise ExportInvalid(f"{path}: no digest in it")
    return anchors


def your_scope(path: Path, number: int, item: dict[str, Any]) -> str:
    """The caller's scope's name that a digest line naming scopes by keyed hash carries."""
    name = item.get("your_scope")
    if not isinstance(name, str) or not _HEX64.fullmatch(name):
        raise ExportInvalid(
            f"{path} line {number}: no your_scope (a digest that names scopes by keyed hash "
            "needs your scope's name, as GET /api/audit-events/digests gives it)"
        )
    return name


def _time(value: Any) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment


def exported_event(path: Path, number: int, item: dict[str, Any]) -> dict[str, Any]:
    """The stored fields of the exported event on line `number`, typed as the chain
    encodes them."""
    try:
        return _event(item)
    except (KeyError, TypeError, ValueError):
        raise ExportInvalid(
            f"{path} line {number}: not an exported audit event (fields missing or malformed)"
        ) from None


def _event(item: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "seq": item["seq"],
        "id": uuid.UUID(item["id"]),
        "recorded_at": _time(item["recorded_at"]),
        "occurred_at": _time(item["occurred_at"]),
        "patient_id": uuid.UUID(item["patient_id"]) if item["patient_id"] is not None else None,
        "prev_hash": bytes.fromhex(item["prev_hash"]) if item["prev_hash"] is not None else None,
        "hash": bytes.fromhex(item["hash"]),
        "detail": item["detail"],
    }
    if not isinstance(row["seq"], int) or isinstance(row["seq"], bool) or row["seq"] < 1:
        raise ValueError("seq")
    if not isinstance(row["detail"], dict) or len(row["hash"]) != 32:
        raise ValueError("detail or hash")
    for name in (*_REQUIRED_TEXT, *_NULLABLE_TEXT):
        value = item[name]
        if not isinstance(value, str) and (value is not None or name in _REQUIRED_TEXT):
            raise ValueError(name)
        row[name] = value
    return row
