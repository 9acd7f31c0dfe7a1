"""Command line: `python -m app migrate | serve | dev | audit partitions | audit digest |
audit verify-export`.

Every failure a user can cause (bad configuration, no database) ends in one readable line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.db import connect_raw, migrate
from app.core.errors import DatabaseUnavailable
from app.core.settings import (
    ConfigError,
    Settings,
    describe_validation_error,
    load_settings,
    parse_signing_keys,
)


class DatabaseSettings(BaseSettings):
    """Only what `migrate` and `audit partitions` need: no Auth0 settings required."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")
    database_url: str
    migrations_database_url: str | None = Field(default=None)

    @property
    def owner_url(self) -> str:
        return self.migrations_database_url or self.database_url


class SigningSettings(DatabaseSettings):
    """What `audit digest` needs: the application's database and the signing key."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)
    audit_signing_key: SecretStr

    @field_validator("audit_signing_key")
    @classmethod
    def _keys(cls, value: SecretStr) -> SecretStr:
        parse_signing_keys(value.get_secret_value().strip())  # never quotes the key
        return value


class PortUnavailable(Exception):
    """The address to listen on is taken (another server) or not ours to bind."""


def _check_port(host: str, port: int) -> None:
    """Fail before any work (database, embedded server) when `host:port` cannot be bound;
    uvicorn would otherwise start the app, then log the bind error and a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortUnavailable(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                " (is another server running there? choose another with --port or PORT)"
            ) from None


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _owner_url() -> str:
    try:
        return DatabaseSettings().owner_url
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = asyncio.run(migrate(_owner_url()))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def cmd_audit_partitions(args: argparse.Namespace) -> int:
    async def run() -> int:
        conn = await connect_raw(_owner_url())
        try:
            created: int = await conn.fetchval(
                "SELECT audit_events_ensure_partitions($1)", args.months
            )
        finally:
            await conn.close()
        return created

    created = asyncio.run(run())
    print(f"created {created} audit partition(s) covering the next {args.months} month(s)")
    return 0


def cmd_audit_digest(args: argparse.Namespace) -> int:
    import asyncpg

    from app.audit.digests import IssuedDigest, issue_digest
    from app.audit.signing import KeyRing

    try:
        settings = SigningSettings()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    ring = KeyRing.from_setting(settings.audit_signing_key.get_secret_value().strip())

    async def run() -> IssuedDigest | None:
        conn = await connect_raw(settings.database_url)
        try:
            return await issue_digest(conn, ring)
        finally:
            await conn.close()

    try:
        issued = asyncio.run(run())
    except asyncpg.PostgresError as exc:
        return _fail(f"the digest was not stored: {exc}")
    assert issued is not None  # no interval: always issued
    print(
        f"issued audit digest {issued.number} at {issued.issued_at.isoformat()} with key "
        f"{issued.kid}: {issued.heads} chain head(s), events up to seq {issued.watermark}"
    )
    return 0


def cmd_audit_verify_export(args: argparse.Namespace) -> int:
    from app.audit.offline import ExportInvalid, verify_export

    try:
        verdict = verify_export(args.events, args.digests, args.keys)
    except ExportInvalid as exc:
        return _fail(str(exc))
    print(verdict.message)
    return 0 if verdict.intact else 1


def cmd_audit(args: argparse.Namespace) -> int:
    commands = {
        "partitions": cmd_audit_partitions,
        "digest": cmd_audit_digest,
        "verify-export": cmd_audit_verify_export,
    }
    return commands[args.audit_command](args)


async def _check_database(settings: Settings) -> None:
    conn = await connect_raw(settings.database_url, connect_timeout=5)
    await conn.close()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from app.core.logs import configure_logging
    from app.http.server import GracefulServer

    settings = load_settings()
    _check_port(args.host, args.port)
    asyncio.run(_check_database(settings))
    configure_logging(settings.log_level)
    config = uvicorn.Config(
        "app.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        server_header=False,
        proxy_headers=False,
        log_config=None,
        timeout_graceful_shutdown=20,
    )
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return 0
    server = GracefulServer(config)
    server.run()
    return 0 if server.started else 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cmd_dev(args: argparse.Namespace) -> int:
    from app.dev.server import run_dev

    _check_port("127.0.0.1", args.port)
    return asyncio.run(run_dev(port=args.port, tenant_port=args.tenant_port or _free_port()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply pending migrations (as MIGRATIONS_DATABASE_URL)")

    serve = sub.add_parser("serve", help="run the service under uvicorn (uvloop, httptools)")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    serve.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "1")))

    dev = sub.add_parser("dev", help="run everything locally: stand-in tenant, database, app")
    dev.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    dev.add_argument("--tenant-port", type=int, default=0)

    audit = sub.add_parser("audit", help="audit log maintenance")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    partitions = audit_sub.add_parser("partitions", help="create monthly partitions ahead")
    partitions.add_argument("--months", type=int, default=3)
    audit_sub.add_parser(
        "digest", help="sign and store a digest of the audit chain heads now (AUDIT_SIGNING_KEY)"
    )
    verify = audit_sub.add_parser(
        "verify-export",
        help="check an exported audit log against its signed digests, offline (docs/audit.md)",
    )
    verify.add_argument("--events", type=Path, required=True, help="the NDJSON export")
    verify.add_argument("--digests", type=Path, required=True, help="digests, one per line")
    verify.add_argument("--keys", type=Path, required=True, help="the pinned JWKS")
    return parser


COMMANDS = {
    "migrate": cmd_migrate,
    "serve": cmd_serve,
    "dev": cmd_dev,
    "audit": cmd_audit,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except (DatabaseUnavailable, PortUnavailable) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
