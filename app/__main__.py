"""Command line: `python -m app migrate | serve | dev | audit partitions | audit digest |
audit register-key | audit verify-export`.

Every failure a user can cause (bad configuration, no database) ends in one readable line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from app.audit import commands as audit_commands
from app.core.cli import fail
from app.core.db import (
    MIGRATIONS_DIR,
    MigrationChanged,
    check_applied_migrations,
    discover_migrations,
    migrate,
)
from app.core.errors import DatabaseUnavailable
from app.core.settings import ConfigError, Settings, load_settings
from app.core.settings.database import DatabaseSettings
from app.core.settings.server import DEFAULT_HOST, DEFAULT_PORT, ServerSettings
from app.core.settings.values import one_line

T = TypeVar("T")


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


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = DatabaseSettings.load()
    directory = settings.migrations_dir or MIGRATIONS_DIR
    if not directory.is_dir():  # an installed copy without the repository: nothing to apply
        raise ConfigError(
            f"configuration error: no migrations at {directory}; set MIGRATIONS_DIR to the "
            "migrations/ directory of this release"
        )
    migrations = discover_migrations(directory)
    applied = asyncio.run(
        migrate(settings.owner_url, migrations, retry_seconds=settings.connect_retry_seconds)
    )
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:

    from app.core.logs import configure_logging
    from app.http.server import GracefulServer, ServeConfig, run_workers

    settings = load_settings()
    if settings.server.public_url is None:  # every absolute link is built from it, never Host
        raise ConfigError(one_line(["PUBLIC_URL"], []))
    host, port, workers = _listen(args, settings)
    _check_port(host, port)
    # The database answers, and no migration it applied has been edited since.
    database = settings.database
    asyncio.run(
        check_applied_migrations(
            database.url, database.migrations_dir, retry_seconds=database.connect_retry_seconds
        )
    )
    configure_logging(settings.server.log_level)
    if settings.server.metrics_token is None:
        logging.getLogger("app.serve").warning(
            "METRICS_TOKEN is unset: /metrics answers anyone who reaches this port"
        )
    config = ServeConfig(
        "app.main:app",
        shutdown_drain_seconds=settings.server.shutdown_drain_seconds,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        server_header=False,
        proxy_headers=False,
        log_config=None,
        timeout_graceful_shutdown=20,
    )
    if config.workers > 1:
        run_workers(config)  # their metrics summed in one scrape (app.core.metrics)
        return 0
    server = GracefulServer(config)
    server.run()
    return 0 if server.started else 1


def _listen(args: argparse.Namespace, settings: Settings) -> tuple[str, int, int]:
    """HOST, PORT and WORKERS: the command line's, else the settings' (environment, .env)."""
    return (
        args.host if args.host is not None else settings.server.host,
        args.port if args.port is not None else settings.server.port,
        args.workers if args.workers is not None else settings.server.workers,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cmd_dev(args: argparse.Namespace) -> int:
    run_dev = _development_tooling()
    if run_dev is None:
        return fail("`dev` is not part of this installation (the image carries `serve` only)")
    port = args.port if args.port is not None else ServerSettings.load().port
    _check_port("127.0.0.1", port)
    return asyncio.run(run_dev(port=port, tenant_port=args.tenant_port or _free_port()))


def _development_tooling() -> Callable[..., Coroutine[Any, Any, int]] | None:
    """`devkit.server.run_dev` from the checkout beside this package, or None where there is
    none (an installed wheel or the image: `devkit` is never packaged)."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "devkit" / "__init__.py").is_file() and str(checkout) not in sys.path:
        sys.path.append(str(checkout))
    try:
        from devkit.server import run_dev
    except ModuleNotFoundError as exc:
        if exc.name not in {"devkit", "devkit.server"}:
            raise
        return None
    return run_dev


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to every option that has a value default; the options whose
    default comes from a setting say so in their own help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def _port(text: str) -> int:
    port = _positive(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (1-65535)")
    return port


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    fmt = _HelpFormatter
    summary = __doc__
    parser = argparse.ArgumentParser(prog="python -m app", description=summary, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "migrate",
        help="apply pending migrations (as MIGRATIONS_DATABASE_URL)",
        description="Apply pending migrations from MIGRATIONS_DIR as MIGRATIONS_DATABASE_URL "
        "(else DATABASE_URL); refuse when an applied file was edited since.",
        formatter_class=fmt,
    )

    serve = sub.add_parser(
        "serve",
        help="run the service under uvicorn (uvloop, httptools)",
        description="Run the service. Options override the settings (environment, then .env).",
        formatter_class=fmt,
    )
    serve.add_argument("--host", help=f"address to listen on (default: HOST, else {DEFAULT_HOST})")
    serve.add_argument(
        "--port", type=_port, help=f"port to listen on (default: PORT, else {DEFAULT_PORT})"
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        help="worker processes (default: WORKERS, else 1)",
    )

    dev = sub.add_parser(
        "dev",
        help="run everything locally: stand-in tenant, database, app",
        description="Run the service on 127.0.0.1 with a stand-in Auth0 tenant and a database "
        "(DATABASE_URL, else a throwaway embedded Postgres). Development only.",
        formatter_class=fmt,
    )
    dev.add_argument(
        "--port", type=_port, help=f"the service's port (default: PORT, else {DEFAULT_PORT})"
    )
    dev.add_argument(
        "--tenant-port", type=int, default=0, help="the stand-in tenant's port; 0 picks a free one"
    )

    audit_commands.add_parser(sub, fmt)
    return parser


COMMANDS = {
    "migrate": cmd_migrate,
    "serve": cmd_serve,
    "dev": cmd_dev,
    "audit": audit_commands.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        return fail(str(exc), 2)
    except (DatabaseUnavailable, MigrationChanged, PortUnavailable) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
