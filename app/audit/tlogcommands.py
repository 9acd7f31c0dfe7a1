"""`python -m app audit ...`: the Merkle trees' subcommands (docs/audit.md): bringing an
existing log into the trees, checking one event's proof or two checkpoints offline, running
a witness, sealing closed months into archives and checking them offline."""

from __future__ import annotations

import argparse
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core.cli import fail, on_connection, owner_url
from app.core.settings.database import DatabaseSettings

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

# About how many events the log holds (the partitions' statistics), for the time left.
_ESTIMATE = """
SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'audit_events'::regclass
"""


def cmd_audit_build_trees(args: argparse.Namespace) -> int:
    from app.audit.trees import extend_trees
    from app.core.progress import Progress

    database = DatabaseSettings.load()
    done = 0

    async def build(conn: Any) -> int:
        nonlocal done
        watermark = await conn.fetchval("SELECT audit_events_watermark()")
        shown = Progress("leaves in the trees", await conn.fetchval(_ESTIMATE))
        while True:
            async with conn.transaction():  # one slice per transaction: the lock is short
                grown = await extend_trees(conn, watermark, args.batch)
            done = await conn.fetchval("SELECT coalesce(sum(size), 0)::bigint FROM audit_trees")
            if not grown:
                shown.finish()
                return int(watermark)
            shown.update(done)

    watermark: int = on_connection(database.url, build)
    print(f"the audit trees cover every event up to seq {watermark} ({done} leaves); the next "
          "digest signs their checkpoints")  # fmt: skip
    return 0


def cmd_audit_verify_inclusion(args: argparse.Namespace) -> int:
    from app.audit.proofs import ProofRejected, check_inclusion

    try:
        print(check_inclusion(args.event, args.proof, args.checkpoint, args.keys))
    except ProofRejected as exc:
        return fail(str(exc))
    return 0


def cmd_audit_verify_consistency(args: argparse.Namespace) -> int:
    from app.audit.proofs import ProofRejected, check_consistency

    try:
        print(check_consistency(args.old, args.new, args.proof, args.keys))
    except ProofRejected as exc:
        return fail(str(exc))
    return 0


def cmd_audit_witness(args: argparse.Namespace) -> int:
    import asyncio

    import httpx

    from app.audit.evidence import ExportInvalid, load_keys
    from app.audit.witness import WitnessRefused, load_or_make_key, public_entry, witness_once

    if not args.state.is_dir():
        return fail(f"{args.state}: not a directory")
    try:
        keys = load_keys(args.keys)
        token = args.token_file.read_text().strip()
    except ExportInvalid as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{args.token_file}: cannot read it ({exc.strerror})")
    name, key, made = load_or_make_key(args.state, args.name)
    if made:
        print(f"made the witness key {name}; the log accepts its cosignatures once its "
              f"AUDIT_WITNESS_KEYS lists {public_entry(name, key)}")  # fmt: skip

    async def once() -> Any:
        async with httpx.AsyncClient(base_url=args.log, timeout=30) as http:
            return await witness_once(http, token, keys, args.state, args.name)

    try:
        done = asyncio.run(once())
    except WitnessRefused as exc:
        return fail(f"refused to cosign: {exc}")
    except httpx.HTTPError as exc:
        return fail(f"cannot reach the log: {type(exc).__name__}")
    since = f", extending size {done.previous.size}" if done.previous is not None else ""
    print(f"cosigned {done.checkpoint.origin} size {done.checkpoint.size}{since} as {done.witness}")
    return 0


def cmd_audit_archive(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    import asyncpg

    from app.audit.archive import ArchiveRefused, archive_month, plan
    from app.audit.sealed import MONTH

    if not MONTH.fullmatch(args.before):
        return fail(f"--before {args.before!r}: expected YYYY-MM")
    if not args.dry_run and not args.to.is_dir():
        return fail(f"{args.to}: not a directory")

    async def work(conn: Any) -> int:
        months = await plan(conn, args.before, datetime.now(UTC).date())
        if not months:
            print(f"no closed month before {args.before} to archive")
            return 0
        for month in months:
            if args.dry_run:
                then = "drop" if args.drop else "detach"
                print(f"would archive {month.month}: {month.events} event(s) from "
                      f"{month.partition}, then {then} it")  # fmt: skip
                continue
            events = await archive_month(conn, month, args.to, drop=args.drop)
            print(f"archived {month.month}: {events} event(s), checked, "
                  f"{month.partition} {'dropped' if args.drop else 'detached'}")  # fmt: skip
        return 0

    try:
        return int(on_connection(owner_url(), work))
    except ArchiveRefused as exc:
        return fail(f"nothing more archived: {exc}")
    except asyncpg.InsufficientPrivilegeError:
        return fail("only the migrations owner detaches partitions: set MIGRATIONS_DATABASE_URL")


def cmd_audit_verify_archives(args: argparse.Namespace) -> int:
    from app.audit.sealed import ArchiveBroken, verify_archives

    try:
        print(verify_archives(args.dir, args.keys, args.events))
    except ArchiveBroken as exc:
        return fail(f"broken: {exc}")
    return 0


def cmd_audit_access_report(args: argparse.Namespace) -> int:
    from app.audit.sealed import ArchiveBroken, patient_report

    try:
        done = patient_report(args.dir, args.patient, args.keys, sys.stdout.buffer)
    except ArchiveBroken as exc:
        return fail(f"broken: {exc}")
    sys.stdout.flush()
    months = f"{done.months[0]} to {done.months[-1]}" if done.months else "none"
    held = (
        "the archives verified as one history under their signed checkpoints"
        if args.keys is not None
        else "every file matched its manifest's SHA-256 (with --keys: the manifests' "
        "signed checkpoints too)"
    )
    print(f"{done.events} archived event(s) about the patient in {len(done.months)} "
          f"archive(s) ({months}); {held}", file=sys.stderr)  # fmt: skip
    return 0


def _patient_id(value: str) -> uuid.UUID:
    if not _UUID.fullmatch(value):
        raise argparse.ArgumentTypeError("not a patient id (a UUID: 8-4-4-4-12 hex digits)")
    return uuid.UUID(value)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "build-trees": cmd_audit_build_trees,
    "verify-inclusion": cmd_audit_verify_inclusion,
    "verify-consistency": cmd_audit_verify_consistency,
    "witness": cmd_audit_witness,
    "archive": cmd_audit_archive,
    "verify-archives": cmd_audit_verify_archives,
    "access-report": cmd_audit_access_report,
}


def add_parsers(audit_sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The subcommands above, on `python -m app audit`'s subparsers."""
    trees = audit_sub.add_parser(
        "build-trees",
        help="bring the existing events into their scopes' Merkle trees, in slices "
        "(DATABASE_URL); the next digest signs their checkpoints",
        formatter_class=fmt,
    )
    trees.add_argument("--batch", type=int, default=50_000, help="events per transaction")
    inclusion = audit_sub.add_parser(
        "verify-inclusion",
        help="check offline that an event is in a signed checkpoint's tree (docs/audit.md)",
        formatter_class=fmt,
    )
    inclusion.add_argument(
        "--event", type=Path, required=True, help="the event (a JSON object) (required)"
    )
    inclusion.add_argument(
        "--proof",
        type=Path,
        required=True,
        help="GET /api/audit-events/{id}/inclusion's body (required)",
    )
    inclusion.add_argument(
        "--checkpoint", type=Path, required=True, help="the signed checkpoint (text) (required)"
    )
    inclusion.add_argument("--keys", type=Path, required=True, help="the pinned JWKS (required)")
    consistency = audit_sub.add_parser(
        "verify-consistency",
        help="check offline that a newer checkpoint extends an older one (docs/audit.md)",
        formatter_class=fmt,
    )
    consistency.add_argument(
        "--old", type=Path, required=True, help="the older checkpoint (required)"
    )
    consistency.add_argument(
        "--new", type=Path, required=True, help="the newer checkpoint (required)"
    )
    consistency.add_argument(
        "--proof",
        type=Path,
        required=True,
        help="GET /api/audit-events/consistency's body (required)",
    )
    consistency.add_argument("--keys", type=Path, required=True, help="the pinned JWKS (required)")
    witness = audit_sub.add_parser(
        "witness",
        help="cosign the log's latest checkpoint if it extends the last one this witness "
        'cosigned (docs/audit.md, "Running a witness")',
        formatter_class=fmt,
    )
    witness.add_argument("--log", required=True, help="the service's URL (required)")
    witness.add_argument("--keys", type=Path, required=True, help="the pinned JWKS (required)")
    witness.add_argument(
        "--state",
        type=Path,
        required=True,
        help="this witness's directory: its key and the last checkpoint it cosigned (required)",
    )
    witness.add_argument(
        "--token-file",
        type=Path,
        required=True,
        help="a read:audit_events token of the scope witnessed (required)",
    )
    witness.add_argument(
        "--name", default="witness", help="the witness key's name, when it is made"
    )
    archive = audit_sub.add_parser(
        "archive",
        help="seal each closed month before --before into DIR, check it, then detach its "
        "partition (as the migrations owner; docs/audit.md)",
        formatter_class=fmt,
    )
    archive.add_argument("--before", required=True, help="YYYY-MM: months before it (required)")
    archive.add_argument("--to", type=Path, required=True, help="the archive directory (required)")
    archive.add_argument(
        "--drop", action="store_true", help="drop each partition after its archive checks"
    )
    archive.add_argument("--dry-run", action="store_true", help="say what would be archived")
    archives = audit_sub.add_parser(
        "verify-archives",
        help="check sealed archives (and the live export after them) as one history, offline",
        formatter_class=fmt,
    )
    archives.add_argument("--dir", type=Path, required=True, help="the archives (required)")
    archives.add_argument("--keys", type=Path, required=True, help="the pinned JWKS (required)")
    archives.add_argument(
        "--events",
        type=Path,
        help="the live log's NDJSON export from the month after (default: none)",
    )
    report = audit_sub.add_parser(
        "access-report",
        help="a patient's events in the sealed archives, as archived lines (NDJSON) on stdout, "
        "each file checked against its manifest first (docs/audit.md)",
        formatter_class=fmt,
    )
    report.add_argument("--dir", type=Path, required=True, help="the archives (required)")
    report.add_argument(
        "--patient", type=_patient_id, required=True, help="the patient's id (required)"
    )
    report.add_argument(
        "--keys",
        type=Path,
        help="the pinned JWKS: verify the archives as one signed history first (default: "
        "the files' SHA-256 only)",
    )
