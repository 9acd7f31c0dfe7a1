"""The connection pool and the migration runner.

The pool is `databases` over asyncpg. Hot paths may take the asyncpg connection underneath
(`connection.raw_connection`) to skip the SQLAlchemy layer; all SQL stays parameterised.

Migrations are the numbered `.sql` files in `migrations/`, applied in name order, each once,
each inside its own transaction, under a session advisory lock so that two copies of the
service starting together apply each file exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from databases import Database

from app.core.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

# The repository's `migrations/`; an installed copy (the Docker image) names it in MIGRATIONS_DIR.
MIGRATIONS_DIR = Path(
    os.environ.get("MIGRATIONS_DIR") or Path(__file__).resolve().parents[2] / "migrations"
)
# Any fixed 64-bit number: the lock every copy of the service takes while migrating.
MIGRATION_LOCK_ID = 0x0A0B_F0DB

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def asyncpg_dsn(url: str) -> str:
    """A DSN asyncpg accepts: `postgresql+asyncpg://` becomes `postgresql://`."""
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme in {"postgresql+asyncpg", "postgres"} else parts.scheme
    return urlunsplit((scheme, *parts[1:]))


def create_database(
    url: str, *, min_size: int, max_size: int, statement_timeout_ms: int = 5000
) -> Database:
    """The application's pool (not yet connected). A `?host=` socket directory is honoured."""
    parts = urlsplit(asyncpg_dsn(url))
    query = dict(parse_qsl(parts.query))
    options: dict[str, Any] = {
        "reset": _reset_if_needed,
        "min_size": min_size,
        "max_size": max_size,
        "server_settings": {
            "statement_timeout": str(statement_timeout_ms),
            "application_name": "auth0-bff",
        },
    }
    if "host" in query:
        options["host"] = query.pop("host")
    if "port" in query:
        options["port"] = int(query.pop("port"))
    clean = urlunsplit((*parts[:3], urlencode(query), parts.fragment))
    return Database(clean, **options)


async def _reset_if_needed(conn: asyncpg.Connection) -> None:
    """asyncpg resets every released connection (a second round trip, ~120 us of CPU a
    request). Pooled connections never carry session state here (no SET, LISTEN, advisory
    session locks or cursors: those live on dedicated connections), so only a transaction
    left open needs undoing."""
    if conn.is_in_transaction():
        await conn.reset()


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def discover_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    files = sorted(p for p in directory.glob("*.sql") if p.is_file())
    return [Migration(p.stem, p) for p in files]


async def connect_raw(url: str, *, connect_timeout: float = 10.0) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(asyncpg_dsn(url), timeout=connect_timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(describe_connect_error(url, exc)) from None


def describe_connect_error(url: str, exc: BaseException) -> str:
    parts = urlsplit(url)
    where = f"{parts.hostname or 'local socket'}:{parts.port or 5432}{parts.path}"
    reason = exc.__class__.__name__
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"database unreachable at {where}: {reason}{': ' + message if message else ''}"


async def migrate(url: str, migrations: Sequence[Migration] | None = None) -> list[str]:
    """Apply pending migrations as the owner role; return the versions applied now."""
    pending_source = list(migrations) if migrations is not None else discover_migrations()
    conn = await connect_raw(url)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for migration in pending_source:
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", migration.version
                    )
                applied_now.append(migration.version)
                logger.info("migration applied", extra={"version": migration.version})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    finally:
        await conn.close()
    return applied_now


async def is_ready(database: Database) -> bool:
    """True when a query round trip succeeds within the pool's own timeouts."""
    try:
        async with connection(database) as conn:
            await conn.fetchval("SELECT 1")
    except Exception:  # any failure means "not ready"; the reason is logged, never raised
        logger.warning("readiness check failed", exc_info=True)
        return False
    return True


def pool_of(database: Database) -> asyncpg.Pool:
    """The asyncpg pool underneath `databases` (its postgres backend keeps it as `_pool`).

    Hot paths and every module's SQL use asyncpg directly: parameterised `$n` queries,
    without the SQLAlchemy layer (about 120 µs a query), and each `acquire` is a distinct
    connection, which `databases`' task-local connection is not.
    """
    pool: asyncpg.Pool | None = getattr(database._backend, "_pool", None)
    if pool is None:
        raise DatabaseUnavailable("the database pool is not connected")
    return pool


ACQUIRE_TIMEOUT_SECONDS = 5.0
# Failures after which a pooled connection cannot be trusted again.
_BROKEN = (asyncpg.InternalClientError, asyncpg.PostgresConnectionError, OSError)


@contextlib.asynccontextmanager
async def connection(database: Database) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own (never shared with another caller in this task).

    Failing to get one at all (server down, refusing connections, pool exhausted past its
    timeout) raises `DatabaseUnavailable`, which the app answers with 503.
    """
    pool = pool_of(database)
    try:
        conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS)
    except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"no database connection: {type(exc).__name__}") from exc
    try:
        yield conn
    except _BROKEN:
        conn.terminate()  # the pool replaces it instead of handing it out again
        raise
    finally:
        await pool.release(conn)


@contextlib.asynccontextmanager
async def transaction(database: Database) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction: committed on success, rolled back on any error."""
    async with connection(database) as conn, conn.transaction():
        yield conn
