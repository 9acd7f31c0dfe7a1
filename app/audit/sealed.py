"""Sealed monthly archives of the audit log, and checking them offline as one history.

    python -m app audit verify-archives --dir DIR --keys KEYS.json [--events LIVE.ndjson]

An archive of month M (`python -m app audit archive`, app/audit/archive.py) is two files:

    audit-M.ndjson.gz   the month's events, every scope, in seq order, as the export
                        writes them (gzip)
    audit-M.json        its manifest: {"v": 1, "month", "events", "sha256" (of the .gz),
                        "scopes": [{"scope", "first_leaf", "size", "last_hash",
                        "checkpoint", "consistency"}]}

For each scope of the month, `size` is its tree's size at the month's last event, and
`consistency` the RFC 9162 proof that the tree of that size extends to the signed
`checkpoint` (the latest when it was written). The check reads the archives in month
order: every file's SHA-256; every event's hash against its fields, its link to the
scope's previous event (in this archive or an earlier one: the first archive must start
each scope's chain), its leaf at the scope's next index; and, per scope and archive, the
root of every leaf so far against the checkpoint through the proof. So a month dropped
from the database still proves its events, and every later checkpoint vouches for it.
With `--events`, the live log's export must continue each archived scope's chain. Memory
holds O(log n) hashes per scope (`Frontier`), never the events.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from app.audit.chain import canonical_detail, event_hash
from app.audit.checkpoints import CheckpointInvalid, verify_checkpoint
from app.audit.evidence import ExportInvalid, exported_event, load_keys
from app.audit.merkle import Frontier, ProofInvalid, leaf_hash, verify_consistency
from app.core.progress import Progress

MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


class ArchiveBroken(Exception):
    """What does not hold, naming the file (and line); exit 1."""


def archive_names(month: str) -> tuple[str, str]:
    return f"audit-{month}.ndjson.gz", f"audit-{month}.json"


@dataclass
class _Scope:
    frontier: Frontier = field(default_factory=Frontier)
    last_hash: bytes | None = None
    last_seq: int = 0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def read_event(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        row = exported_event(path, number, orjson.loads(line))
        row["detail"] = canonical_detail(row["detail"])
    except (ExportInvalid, orjson.JSONDecodeError, ValueError):
        raise ArchiveBroken(f"{path} line {number}: not an archived audit event") from None
    if event_hash(row) != row["hash"]:
        raise ArchiveBroken(f"{path} line {number}: the event's fields do not give its hash")
    return row


def _follow(scopes: dict[str, _Scope], path: Path, number: int, row: dict[str, Any]) -> None:
    state = scopes.setdefault(row["scope"], _Scope())
    if row["prev_hash"] != state.last_hash or row["seq"] <= state.last_seq:
        raise ArchiveBroken(
            f"{path} line {number}: seq {row['seq']} does not continue its scope's chain "
            "(an event or an archive is missing, or out of order)"
        )
    state.frontier.append(leaf_hash(row["hash"]))
    state.last_hash, state.last_seq = row["hash"], row["seq"]


def _manifest(path: Path) -> dict[str, Any]:
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        raise ArchiveBroken(f"{path}: cannot read it as JSON") from None
    if (
        not isinstance(value, dict)
        or value.get("v") != 1
        or not isinstance(value.get("scopes"), list)
    ):
        raise ArchiveBroken(f"{path}: not an archive manifest")
    return value


def _seal(path: Path, entry: Any, state: _Scope | None, keys: dict[str, Any]) -> None:
    if not isinstance(entry, dict) or state is None:
        raise ArchiveBroken(f"{path}: a scope of the manifest has no events in the archive")
    if entry.get("size") != state.frontier.size:
        raise ArchiveBroken(f"{path}: a scope's tree size is not its events' count so far")
    try:
        checkpoint = verify_checkpoint(entry["checkpoint"], keys)
        proof = [base64.b64decode(h, validate=True) for h in entry["consistency"]]
        verify_consistency(
            state.frontier.size, checkpoint.size, state.frontier.root(), checkpoint.root, proof
        )
    except (CheckpointInvalid, ProofInvalid, KeyError, TypeError, binascii.Error) as exc:
        raise ArchiveBroken(
            f"{path}: scope {entry.get('scope')!r}: its events are not in the signed tree ({exc})"
        ) from None


def sealed_files(directory: Path) -> list[tuple[Path, dict[str, Any], Path]]:
    """Each archive's manifest (its path and content) and data file, in month order, every
    file's SHA-256 checked against its manifest first; `ArchiveBroken` at the first that
    does not hold."""
    manifests = sorted(directory.glob("audit-*.json"))
    if not manifests:
        raise ArchiveBroken(f"{directory}: no archive")
    found = []
    for manifest_path in manifests:
        manifest = _manifest(manifest_path)
        data = directory / archive_names(str(manifest.get("month")))[0]
        if not data.exists() or file_sha256(data) != manifest.get("sha256"):
            raise ArchiveBroken(f"{data}: missing, or not the file its manifest sealed")
        found.append((manifest_path, manifest, data))
    return found


def verify_archives(directory: Path, keys_path: Path, live: Path | None = None) -> str:
    """The verdict's message when the archives (and the live export) are one history;
    `ArchiveBroken` naming the first thing that breaks."""
    try:
        keys = load_keys(keys_path)
    except ExportInvalid as exc:
        raise ArchiveBroken(str(exc)) from None
    sealed = sealed_files(directory)
    scopes: dict[str, _Scope] = {}
    events = 0
    for manifest_path, manifest, data in sealed:
        count, expected = 0, manifest.get("events")
        shown = Progress(f"{data.name} verified", expected if isinstance(expected, int) else None)
        with gzip.open(data, "rb") as handle:
            for number, line in enumerate(handle, 1):
                _follow(scopes, data, number, read_event(data, number, line))
                count += 1
                shown.update(count)
        shown.finish()
        if count != expected:
            raise ArchiveBroken(f"{data}: {count} events, its manifest says {expected}")
        events += count
        for entry in manifest["scopes"]:
            _seal(manifest_path, entry, scopes.get(entry.get("scope")), keys)
    tail = ""
    if live is not None:
        tail = _continue_live(scopes, live)
    return (
        f"intact: {events} archived event(s) in {len(sealed)} archive(s), {len(scopes)} "
        f"scope(s), each under its signed checkpoint{tail}"
    )


def _continue_live(scopes: dict[str, _Scope], live: Path) -> str:
    """The live export continues every archived scope it holds; its own events check."""
    seen: set[str] = set()
    count = 0
    try:
        with live.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                row = read_event(live, number, line)
                state = scopes.get(row["scope"])
                if state is not None and row["scope"] not in seen:
                    if row["prev_hash"] != state.last_hash:
                        raise ArchiveBroken(
                            f"{live} line {number}: seq {row['seq']} does not follow its "
                            "scope's last archived event"
                        )
                    seen.add(row["scope"])
                count += 1
    except OSError as exc:
        raise ArchiveBroken(f"{live}: cannot read it ({exc.strerror})") from None
    return f"; the live export's {count} event(s) continue them"


@dataclass
class PatientReport:
    """What `patient_report` wrote: how many events, from which archived months."""

    months: list[str]
    events: int = 0


def _names(row: dict[str, Any], patient: uuid.UUID) -> bool:
    """The event is about `patient` or showed it among others (as the live report finds)."""
    if row["patient_id"] == patient:
        return True
    listed = orjson.loads(row["detail"]).get("patient_ids")
    if not isinstance(listed, list):
        return False
    for value in listed:
        try:
            if uuid.UUID(str(value)) == patient:
                return True
        except ValueError:
            continue
    return False


def patient_report(
    directory: Path, patient: uuid.UUID, keys: Path | None, out: BinaryIO
) -> PatientReport:
    """Write to `out` each archived event that named `patient`, as its archived line, in
    month and seq order. Every file's SHA-256 is checked against its manifest before a line
    is written, and with `keys` the archives are first verified as one history under their
    signed checkpoints (`verify_archives`); each line written checks against its hash."""
    if keys is not None:
        verify_archives(directory, keys)
    sealed = sealed_files(directory)
    report = PatientReport([str(manifest.get("month")) for _, manifest, _ in sealed])
    needle = patient.hex.encode()  # as Postgres reads a uuid: any case, hyphens anywhere
    for _, _, data in sealed:
        with gzip.open(data, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if needle not in line.lower().replace(b"-", b""):
                    continue  # most lines: no parse needed
                if _names(read_event(data, number, line), patient):
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                    report.events += 1
    return report
