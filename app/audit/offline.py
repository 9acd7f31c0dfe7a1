"""Verifying an exported audit log with no database and no service.

    python -m app audit verify-export --events EVENTS.ndjson --digests DIGESTS.ndjson \\
        --keys KEYS.json

EVENTS is `GET /api/audit-events/export?format=ndjson`, DIGESTS one item of
`GET /api/audit-events/digests` per line, KEYS the JWKS of `GET /.well-known/audit-keys`
(pinned by the auditor: docs/audit.md). Checked, in order:

1. every digest's signature, by a key in KEYS (an unknown kid breaks);
2. the digests' own chain: consecutive numbers, each naming the previous one's hash, later
   in time, each starting where the last one's watermark ended, and no scope's signed head
   going backwards (a deleted or inserted digest breaks);
3. every event: its hash against its fields, its link to the scope's event before it in the
   file, and the order (seq grows, recorded_at never goes backwards);
4. every signed head of a scope in the export that the export should hold: present, with
   the signed hash. A chain rewritten and recomputed to the end (head included), which the
   database's own verifier cannot see, differs from what a digest signed before.

The first problem found is the verdict. Input that cannot be read (a malformed or
truncated line, a keys file that is not a JWKS) raises `ExportInvalid` naming the file and
line. Memory holds the digests' heads and a few values per scope, not the events.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from app.audit.chain import CONTENT_COLUMNS, canonical_detail, event_hash
from app.audit.signing import (
    DigestInvalid,
    KeysInvalid,
    load_public_keys,
    scope_hash,
    verify_digest,
)

# The text fields of an exported event (app/audit/chain.py's CONTENT_COLUMNS hashes them).
_REQUIRED_TEXT = ("scope", "action", "crud", "outcome")
_NULLABLE_TEXT = (
    *("actor", "client_id", "session_id", "token_id", "source_ip", "user_agent"),
    *("outcome_reason", "entity_type", "entity_id", "request_id"),
)
assert {*_REQUIRED_TEXT, *_NULLABLE_TEXT} < {name for name, _ in CONTENT_COLUMNS}


class ExportInvalid(Exception):
    """An input file that cannot be read as an export; the message names file and line."""


@dataclass(frozen=True, slots=True)
class Verdict:
    intact: bool
    message: str


class _Broken(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(slots=True)
class _Signed:
    """A signed head: which digest (and line) signed which hash for a seq."""

    hash: bytes
    number: int
    line: int
    issued_at: datetime
    matched: bool = False


@dataclass(slots=True)
class _Scope:
    """What the walk remembers of one scope's chain in the events file."""

    first_seq: int
    last_seq: int
    last_hash: bytes
    last_recorded: datetime
    unanchored: int = 0  # events after the last one a digest signed


@dataclass(slots=True)
class _Walk:
    signed: dict[tuple[str, int], _Signed] = field(default_factory=dict)
    scopes: dict[str, _Scope] = field(default_factory=dict)
    events: int = 0
    digests: int = 0


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as handle:
            yield from enumerate(handle, 1)
    except OSError as exc:
        raise ExportInvalid(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _object(path: Path, number: int, line: bytes) -> dict[str, Any]:
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


def _read_digests(path: Path, keys: dict[str, Any], walk: _Walk) -> None:
    previous = None
    last_head: dict[str, int] = {}
    for number, line in _lines(path):
        item = _object(path, number, line)
        jws = item.get("jws")
        if not isinstance(jws, str):
            raise ExportInvalid(f"{path} line {number}: no jws")
        where = f"digest on line {number}"
        try:
            digest = verify_digest(jws, keys)
        except DigestInvalid as exc:
            raise _Broken(f"{where}: {exc}") from None
        where = f"digest {digest.number} (line {number})"
        if previous is not None:
            if digest.number != previous.number + 1:
                raise _Broken(
                    f"{where} follows digest {previous.number}: a digest is missing or out of place"
                )
            if digest.prev_hash != previous.hash:
                raise _Broken(f"{where} does not name the digest before it (prev_hash)")
            if digest.issued_at <= previous.issued_at:
                raise _Broken(f"{where} was issued before the digest before it")
            if digest.after_seq != previous.watermark:
                raise _Broken(f"{where} does not start where the digest before it ended")
        for head in digest.heads:
            if head.last_seq <= last_head.get(head.scope_hash, 0):
                raise _Broken(f"{where}: a scope's signed head goes backwards")
            last_head[head.scope_hash] = head.last_seq
            walk.signed[(head.scope_hash, head.last_seq)] = _Signed(
                head.last_hash, digest.number, number, digest.issued_at
            )
        previous = digest
        walk.digests += 1


def _time(value: Any) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment


def _event(item: dict[str, Any]) -> dict[str, Any]:
    """The stored fields of an exported event, typed as the chain encodes them."""
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


def _check_event(number: int, row: dict[str, Any], walk: _Walk) -> None:
    seq, scope = row["seq"], row["scope"]
    try:
        row["detail"] = canonical_detail(row["detail"])
        intact = event_hash(row) == row["hash"]
    except ValueError:  # a field the chain cannot encode: only ever by tampering
        intact = False
    if not intact:
        raise _Broken(f"seq {seq} (line {number}): the event's hash does not match its fields")
    known = walk.scopes.get(scope)
    if known is not None:
        recorded = row["recorded_at"]
        if seq <= known.last_seq and recorded > known.last_recorded:
            raise _Broken(
                f"seq {known.last_seq}: recorded at {known.last_recorded.isoformat()}, before "
                f"seq {seq} (line {number}, {recorded.isoformat()}) which the chain puts "
                "ahead of it: backdated"
            )
        if seq <= known.last_seq:
            raise _Broken(
                f"seq {seq} (line {number}) comes after seq {known.last_seq} in the export: "
                "repeated or out of order"
            )
        if recorded < known.last_recorded:
            raise _Broken(
                f"seq {seq} (line {number}): recorded at {recorded.isoformat()}, before seq "
                f"{known.last_seq} ({known.last_recorded.isoformat()}) ahead of it in the "
                "chain: backdated"
            )
        if row["prev_hash"] != known.last_hash:
            raise _Broken(
                f"seq {seq} (line {number}): prev_hash does not match seq {known.last_seq} "
                "before it in the export: an event is missing, inserted or changed"
            )
        known.last_seq, known.last_hash = seq, row["hash"]
        known.last_recorded = row["recorded_at"]
    else:
        known = walk.scopes[scope] = _Scope(seq, seq, row["hash"], row["recorded_at"])
    signed = walk.signed.get((scope_hash(scope), seq))
    if signed is not None:
        if signed.hash != row["hash"]:
            raise _Broken(
                f"seq {seq} (line {number}): digest {signed.number} (line {signed.line} of "
                f"the digests) signed hash {signed.hash.hex()[:16]}… for it, the export has "
                f"{row['hash'].hex()[:16]}…: the chain was rewritten"
            )
        signed.matched, known.unanchored = True, 0
    else:
        known.unanchored += 1


def _read_events(path: Path, walk: _Walk) -> None:
    for number, line in _lines(path):
        item = _object(path, number, line)
        try:
            row = _event(item)
        except (KeyError, TypeError, ValueError):
            raise ExportInvalid(
                f"{path} line {number}: not an exported audit event (fields missing or malformed)"
            ) from None
        _check_event(number, row, walk)
        walk.events += 1


def _missing_heads(walk: _Walk) -> None:
    """A signed head of an exported scope, within the span the export covers, not in it."""
    by_hash = {scope_hash(name): state for name, state in walk.scopes.items()}
    missing = []
    for (name, seq), signed in walk.signed.items():
        state = by_hash.get(name)
        if signed.matched or state is None or seq < state.first_seq:
            continue
        if seq <= state.last_seq or signed.issued_at <= state.last_recorded:
            missing.append((seq, signed))
    if missing:
        seq, signed = min(missing, key=lambda pair: pair[0])
        raise _Broken(
            f"seq {seq}: digest {signed.number} (line {signed.line} of the digests) signed it, "
            "and the export does not hold it: events were removed"
        )


def verify_export(events: Path, digests: Path, keys: Path) -> Verdict:
    """Check an export against its digests and the pinned keys; `ExportInvalid` for input
    that cannot be read."""
    walk = _Walk()
    pinned = load_keys(keys)
    try:
        _read_digests(digests, pinned, walk)
        _read_events(events, walk)
        _missing_heads(walk)
    except _Broken as broken:
        return Verdict(False, f"broken: {broken.message}")
    anchored = sum(1 for signed in walk.signed.values() if signed.matched)
    unanchored = sum(state.unanchored for state in walk.scopes.values())
    message = (
        f"intact: {walk.events} event(s) in {len(walk.scopes)} scope(s), "
        f"{walk.digests} digest(s), {anchored} signed head(s) found in the export"
    )
    if unanchored:
        message += f"; the last {unanchored} event(s) are not under a digest yet"
    return Verdict(True, message)
