"""`python -m app audit ...`: the audit log's maintenance commands, run by an operator
(partitions ahead, a digest now, registering the signing keys as the owner) or an auditor
(checking an export offline); the Merkle trees' are in app/audit/tlogcommands.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.audit import tlogcommands
from app.core.cli import fail, on_connection, owner_url
from app.core.settings import ConfigError
from app.core.settings.audit import AuditSettings
from app.core.settings.database import DatabaseSettings


def cmd_audit_partitions(args: argparse.Namespace) -> int:
    ensure = "SELECT audit_events_ensure_partitions($1)"
    created: int = on_connection(owner_url(), lambda conn: conn.fetchval(ensure, args.months))
    print(f"created {created} audit partition(s) covering the next {args.months} month(s)")
    return 0


def _audit_keys(*required: str) -> AuditSettings:
    """The audit settings, with `required` (field names) set, or `ConfigError` naming them."""
    audit = AuditSettings.load()
    if missing := [AuditSettings.env_name(f) for f in required if getattr(audit, f) is None]:
        raise ConfigError("configuration error: missing required setting(s): " + ", ".join(missing))
    return audit


def cmd_audit_digest(args: argparse.Namespace) -> int:
    import asyncpg

    from app.audit.anchor import Anchor, StateUnreadable, load_anchor, save_anchor
    from app.audit.digests import DigestRefused, DigestRun, issue_digest
    from app.audit.signing import KeyRing, ScopeNames

    database, audit = DatabaseSettings.load(), _audit_keys("signing_key", "scope_key")
    assert audit.signing_key is not None and audit.scope_key is not None
    ring = KeyRing.from_setting(audit.signing_key.get_secret_value(), audit.retired_keys)
    names = ScopeNames.from_setting(audit.scope_key.get_secret_value())
    state = audit.signer_state_file
    try:  # the same rule as the service's issuer, with the same state file
        known = load_anchor(state) if state is not None else None
    except StateUnreadable as exc:
        return fail(f"refused to sign: AUDIT_SIGNER_STATE_FILE {exc} (docs/audit.md)")

    try:
        done: DigestRun = on_connection(
            database.url, lambda c: issue_digest(c, ring, names, known=known)
        )
    except DigestRefused as exc:
        return fail(f"refused to sign: {exc} (docs/audit.md)")
    except asyncpg.PostgresError as exc:
        return fail(f"the digest was not stored: {exc}")
    issued = done.issued
    assert issued is not None  # no interval: always issued
    if state is not None:
        if known is None and done.found is not None:
            print(f"note: no state file at {state} yet: trusted the table's last, {done.found}",
                  file=sys.stderr)  # fmt: skip
        try:
            save_anchor(state, Anchor(issued.number, issued.hash))
        except OSError as exc:
            return fail(f"digest {issued.number} was stored, {state} not written: {exc.strerror}")
    print(
        f"issued audit digest {issued.number} at {issued.issued_at.isoformat()} with key "
        f"{issued.kid}: {issued.heads} chain head(s), events up to seq {issued.watermark}"
    )
    return 0


def cmd_audit_register_key(args: argparse.Namespace) -> int:
    import asyncpg

    from app.audit.digests import register_keys
    from app.audit.signing import KeyRing

    owner, audit = owner_url(), _audit_keys("signing_key")
    assert audit.signing_key is not None
    ring = KeyRing.from_setting(audit.signing_key.get_secret_value())

    try:
        done = on_connection(owner, lambda conn: register_keys(conn, ring))
    except asyncpg.InsufficientPrivilegeError:
        return fail("only the migrations owner registers keys: set MIGRATIONS_DATABASE_URL")
    except asyncpg.UndefinedFunctionError:
        return fail("the database lacks migration 0011: run `python -m app migrate` first")
    except asyncpg.PostgresError as exc:
        return fail(f"no key was registered: {exc}")
    for kid, state in done:
        print(f"audit signing key {kid}: {state}")
    return 0


def cmd_audit_verify_export(args: argparse.Namespace) -> int:
    from app.audit.offline import ExportInvalid, verify_export

    try:
        verdict = verify_export(args.events, args.digests, args.keys, anchors=args.anchor)
    except ExportInvalid as exc:
        return fail(str(exc))
    print(verdict.message)
    return 0 if verdict.intact else 1


def run(args: argparse.Namespace) -> int:
    """`python -m app audit ...`: the subcommand `args` names."""
    commands = {
        "partitions": cmd_audit_partitions,
        "digest": cmd_audit_digest,
        "register-key": cmd_audit_register_key,
        "verify-export": cmd_audit_verify_export,
    }
    commands |= tlogcommands.COMMANDS
    return commands[args.audit_command](args)


def add_parser(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """`audit` and its subcommands, on the command line's subparsers `sub`."""
    audit = sub.add_parser("audit", help="audit log maintenance", formatter_class=fmt)
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    partitions = audit_sub.add_parser(
        "partitions", help="create monthly partitions ahead", formatter_class=fmt
    )
    partitions.add_argument("--months", type=int, default=3, help="how many months ahead to cover")
    audit_sub.add_parser(
        "digest",
        help="sign and store a digest of the audit chain heads now (AUDIT_SIGNING_KEY, "
        "AUDIT_SCOPE_KEY; AUDIT_SIGNER_STATE_FILE as the service)",
        formatter_class=fmt,
    )
    audit_sub.add_parser(
        "register-key",
        help="register AUDIT_SIGNING_KEY's public keys in the database, as the migrations "
        "owner (MIGRATIONS_DATABASE_URL): digests are accepted under registered keys only",
        formatter_class=fmt,
    )
    verify = audit_sub.add_parser(
        "verify-export",
        help="check an exported audit log against its signed digests, offline (docs/audit.md)",
        formatter_class=fmt,
    )
    verify.add_argument("--events", type=Path, required=True, help="the NDJSON export (required)")
    verify.add_argument(
        "--digests", type=Path, required=True, help="digests, one per line (required)"
    )
    verify.add_argument("--keys", type=Path, required=True, help="the pinned JWKS (required)")
    verify.add_argument(
        "--anchor",
        type=Path,
        help="digests you saved earlier, one per line: the digests must hold each unchanged, "
        "and may start at one of them (default: none, so they must start at digest 1)",
    )
    tlogcommands.add_parsers(audit_sub, fmt)
