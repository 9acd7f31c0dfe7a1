"""Verifying an exported audit log with no database and no service.

    python -m app audit verify-export --events EVENTS.ndjson --digests DIGESTS.ndjson \\
        --keys KEYS.json [--anchor SAVED.ndjson]

EVENTS is `GET /api/audit-events/export?format=ndjson`, DIGESTS one item of
`GET /api/audit-events/digests` per line, KEYS the JWKS of `GET /.well-known/audit-keys`
(pinned by the auditor: docs/audit.md), SAVED digests the auditor fetched and kept before
(the anchors). Checked, in order:

1. every digest's signature, by a key in KEYS (an unknown kid breaks);
2. the digests' own chain: at least one digest, the first being digest 1 or an anchor;
   consecutive numbers, each naming the previous one's hash, later in time, each starting
   where the last one's watermark ended, and no scope's signed head going backwards (a
   deleted or inserted digest breaks); every anchor up to the last digest present,
   unchanged (digests deleted and signed anew over a rewritten log break here);
3. every event: its hash against its fields, its link to the scope's event before it in the
   file, and the order (seq grows, recorded_at never goes backwards); and every event a
   digest covers has its scope's head in that digest, at or after it;
4. every signed head of a scope in the export that the export should hold: present, with
   the signed hash. A chain rewritten and recomputed to the end (head included), which the
   database's own verifier cannot see, differs from what a digest signed before.

A version 2 digest names scopes by a keyed hash that only the service computes: its line
carries the caller's scope's name (`your_scope`), and the export must then hold that one
scope. A version 1 digest named them by SHA-256, computed here.

The first problem found is the verdict. Input that cannot be read (a malformed or
truncated line, a keys file that is not a JWKS) raises `ExportInvalid` naming the file and
line. Memory holds the digests' heads and a few values per scope, not the events.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from app.audit.chain import canonical_detail, event_hash
from app.audit.evidence import (
    ExportInvalid,
    exported_event,
    json_object,
    lines,
    load_anchors,
    load_keys,
    your_scope,
)
from app.audit.signing import Digest, DigestInvalid, scope_hash, verify_digest
from app.core.progress import Progress

# How heads of the export's own scope are filed when a digest names scopes by keyed hash
# (never a hex name, so never a version 1 scope's).
_YOURS = "your scope"

__all__ = ["ExportInvalid", "Verdict", "verify_export"]


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


@dataclass(frozen=True, slots=True)
class _Range:
    """The seqs a digest covers, and the heads it signed: by version 1 scope hash, or
    `_YOURS` for the export's scope in a version 2 digest."""

    after_seq: int
    number: int
    line: int
    heads: dict[str, int]


@dataclass(slots=True)
class _Walk:
    signed: dict[tuple[str, int], _Signed] = field(default_factory=dict)
    scopes: dict[str, _Scope] = field(default_factory=dict)
    watermarks: list[int] = field(default_factory=list)  # one per digest, growing
    ranges: list[_Range] = field(default_factory=list)
    keyed: bool = False  # a digest names scopes by keyed hash: one scope in the export
    events: int = 0
    digests: int = 0

    def names(self, scope: str) -> tuple[str, ...]:
        """How the digests file `scope`'s heads: its version 1 hash, and `_YOURS` for the
        export's one scope."""
        return (scope_hash(scope), _YOURS) if self.keyed else (scope_hash(scope),)

    def covering(self, seq: int) -> _Range | None:
        """The digest whose range holds `seq`, if any."""
        at = bisect.bisect_left(self.watermarks, seq)
        if at < len(self.ranges) and self.ranges[at].after_seq < seq:
            return self.ranges[at]
        return None


def _check_anchors(digest: Digest, line: int, anchors: dict[int, tuple[bytes, int]]) -> None:
    saved = anchors.get(digest.number)
    if saved is not None and saved[0] != digest.hash:
        raise _Broken(
            f"digest {digest.number} (line {line}) is not the digest {digest.number} you saved "
            f"(line {saved[1]} of the anchors): the digests were rewritten"
        )


def _read_digests(
    path: Path, keys: dict[str, Any], walk: _Walk, anchors: dict[int, tuple[bytes, int]]
) -> None:
    previous = None
    last_head: dict[str, int] = {}
    for number, line in lines(path):
        item = json_object(path, number, line)
        jws = item.get("jws")
        if not isinstance(jws, str):
            raise ExportInvalid(f"{path} line {number}: no jws")
        where = f"digest on line {number}"
        try:
            digest = verify_digest(jws, keys)
        except DigestInvalid as exc:
            raise _Broken(f"{where}: {exc}") from None
        where = f"digest {digest.number} (line {number})"
        yours = your_scope(path, number, item) if digest.scope_key is not None else None
        if previous is None and digest.number != 1 and digest.number not in anchors:
            raise _Broken(
                f"{where} comes first: the digests must start at digest 1, or at a digest "
                "you saved (--anchor)"
            )
        _check_anchors(digest, number, anchors)
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
        heads: dict[str, int] = {}
        for head in digest.heads:
            if head.last_seq <= last_head.get(head.scope_hash, 0):
                raise _Broken(f"{where}: a scope's signed head goes backwards")
            last_head[head.scope_hash] = head.last_seq
            if yours is not None and head.scope_hash != yours:
                continue  # another tenant's, by a name only the service can tell
            name = _YOURS if yours is not None else head.scope_hash
            heads[name] = head.last_seq
            walk.signed[(name, head.last_seq)] = _Signed(
                head.last_hash, digest.number, number, digest.issued_at
            )
        walk.keyed = walk.keyed or yours is not None
        walk.watermarks.append(digest.watermark)
        walk.ranges.append(_Range(digest.after_seq, digest.number, number, heads))
        previous = digest
        walk.digests += 1
    if previous is None:
        raise _Broken(f"no digest in {path}: nothing signed vouches for the export")
    if removed := [n for n in anchors if n > previous.number]:
        saved = min(removed)
        raise _Broken(
            f"digest {saved}, which you saved (line {anchors[saved][1]} of the anchors), is not "
            f"in the digests, which end at digest {previous.number}: digests were removed"
        )


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
    names = walk.names(scope)
    signed = next((s for n in names if (s := walk.signed.get((n, seq))) is not None), None)
    if signed is not None:
        if signed.hash != row["hash"]:
            raise _Broken(
                f"seq {seq} (line {number}): digest {signed.number} (line {signed.line} of "
                f"the digests) signed hash {signed.hash.hex()[:16]}… for it, the export has "
                f"{row['hash'].hex()[:16]}…: the chain was rewritten"
            )
        signed.matched, known.unanchored = True, 0
        return
    known.unanchored += 1
    covering = walk.covering(seq)
    if covering is not None and max(covering.heads.get(n, 0) for n in names) < seq:
        raise _Broken(
            f"seq {seq} (line {number}): digest {covering.number} (line {covering.line} of the "
            "digests) covers it and signed no head of its scope at or after it: the event was "
            "not in the log when the digest was signed"
            + (", or your_scope is not this scope's name" if walk.keyed else "")
        )


def _read_events(path: Path, walk: _Walk) -> None:
    shown = Progress("events checked")  # on a terminal only; the part done by bytes read
    size, read = _size(path), 0
    for number, line in lines(path):
        read += len(line)
        row = exported_event(path, number, json_object(path, number, line))
        if walk.keyed and walk.scopes and row["scope"] not in walk.scopes:
            raise ExportInvalid(
                f"{path} line {number}: a second scope; digests that name scopes by keyed "
                "hash check an export of one scope, yours"
            )
        _check_event(number, row, walk)
        walk.events += 1
        shown.update(walk.events, read / size if size else None)
    shown.finish()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # `lines` says why it cannot be read


def _missing_heads(walk: _Walk) -> None:
    """A signed head of an exported scope, within the span the export covers, not in it."""
    by_hash = {n: state for name, state in walk.scopes.items() for n in walk.names(name)}
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


def verify_export(
    events: Path, digests: Path, keys: Path, *, anchors: Path | None = None
) -> Verdict:
    """Check an export against its digests, the pinned keys and the digests the auditor
    saved (`anchors`); `ExportInvalid` for input that cannot be read."""
    walk = _Walk()
    pinned = load_keys(keys)
    saved = load_anchors(anchors, pinned) if anchors is not None else {}
    try:
        _read_digests(digests, pinned, walk, saved)
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
