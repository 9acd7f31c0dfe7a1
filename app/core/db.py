"""The connection pool and the migration runner.

The pool is `databases` over asyncpg; `connection()` and `transaction()` hand out asyncpg
connections of the pool underneath (`pool_of`), without the SQLAlchemy layer. All SQL stays
parameterised.

Migrations are the numbered `.sql` files in `migrations/`, applied in name order, each once,
each inside its own transaction, under a session advisory lock so that two copies of the
service starting together apply each file exactly once. Each applied file's SHA-256 is
recorded; a file edited after it was applied stops `migrate` and `serve` (`MigrationChanged`).

A URL may name several hosts (`postgresql://u@h1:5432,h2:5432/db`, as libpq writes it):
every connection (the pool, the listeners, `migrate`) then goes to the one that accepts
writes (`target_session_attrs=read-write` unless the URL says otherwise), so after a
failover they find the promoted standby by themselves. `databases` cannot parse such a URL,
so the pool gets the hosts and ports as asyncpg's own lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from databases import Database

from app.core import timings
from app.core.errors import DATABASE_OUTAGES, DatabaseUnavailable
from app.core.metrics import DB_POOL_IN_USE
from app.core.settings.values import READ_WRITE, hosts_of

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
    applied_at  timestamptz NOT NULL DEFAULT now(),
    checksum    text
)
"""
# Tables created before checksums were recorded: their rows are backfilled on the next run.
ADD_CHECKSUM_COLUMN = "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text"
# The app role may read the bookkeeping, so that `serve` can check it (versions and hashes).
GRANT_MIGRATIONS_READ = """
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bff_app') THEN
        GRANT SELECT ON schema_migrations TO bff_app;
    END IF;
END $$
"""


class MigrationChanged(Exception):
    """An applied migration's file no longer matches what was applied; one line for humans."""


def asyncpg_dsn(url: str) -> str:
    """A DSN asyncpg accepts: `postgresql+asyncpg://` becomes `postgresql://`; a URL naming
    several hosts asks for the writable one unless it says otherwise."""
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme in {"postgresql+asyncpg", "postgres"} else parts.scheme
    query = parts.query
    if len(hosts_of(url)) > 1 and "target_session_attrs" not in dict(parse_qsl(query)):
        query = "&".join(filter(None, [query, f"target_session_attrs={READ_WRITE}"]))
    return urlunsplit((scheme, parts.netloc, parts.path, query, parts.fragment))


def create_database(
    url: str, *, min_size: int, max_size: int, statement_timeout_ms: int = 5000
) -> Database:
    """The application's pool (not yet connected). A `?host=` socket directory is honoured;
    several hosts reach asyncpg as lists, with `target_session_attrs` (read-write by
    default), since `databases` would read only one."""
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
    netloc = parts.netloc
    hosts = hosts_of(url)
    if len(hosts) > 1:
        options["host"] = [host for host, _ in hosts]
        options["port"] = [port or 5432 for _, port in hosts]
        # `databases` parses the URL's one host; asyncpg connects with the lists above.
        credentials, at, _ = netloc.rpartition("@")
        first = hosts[0][0]
        netloc = f"{credentials}{at}{f'[{first}]' if ':' in first else first}"
    if "target_session_attrs" in query:
        options["target_session_attrs"] = query.pop("target_session_attrs")
    if "host" in query:
        options["host"] = query.pop("host")
    if "port" in query:
        options["port"] = int(query.pop("port"))
    clean = urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))
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

    @property
    def checksum(self) -> str:
        """The file's SHA-256, hex: what `schema_migrations.checksum` records."""
        return self.load()[1]

    def load(self) -> tuple[str, str]:
        """The SQL and its checksum, from one read of the file."""
        data = self.path.read_bytes()
        return data.decode("utf-8"), hashlib.sha256(data).hexdigest()


def discover_migrations(directory: Path | None = None) -> list[Migration]:
    """The `.sql` files of `directory` (default: `MIGRATIONS_DIR`), in name order."""
    files = sorted(p for p in (directory or MIGRATIONS_DIR).glob("*.sql") if p.is_file())
    return [Migration(p.stem, p) for p in files]


async def connect_raw(
    url: str, *, connect_timeout: float = 10.0, retry_seconds: float = 0.0
) -> asyncpg.Connection:
    """One connection of its own (to the writable host when the URL names several). With
    `retry_seconds`, failures are retried with a growing pause for that long (a failover
    in progress) before `DatabaseUnavailable`."""
    return await with_retries(
        lambda: _connect_once(url, connect_timeout), retry_seconds, f"connect to {where(url)}"
    )


async def _connect_once(url: str, connect_timeout: float) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(asyncpg_dsn(url), timeout=connect_timeout)
    except (OSError, asyncpg.PostgresError, asyncpg.InternalClientError, TimeoutError) as exc:
        raise DatabaseUnavailable(describe_connect_error(url, exc)) from None


T = TypeVar("T")


async def with_retries(attempt: Callable[[], Awaitable[T]], retry_seconds: float, what: str) -> T:
    """`attempt()`, tried again after a database outage (a pause of 0.2 s, doubling up to 5 s)
    until `retry_seconds` have passed; the last outage is raised."""
    deadline = time.monotonic() + retry_seconds
    delay = 0.2
    while True:
        try:
            return await attempt()
        except DATABASE_OUTAGES as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("cannot %s (%s); retrying in %.1fs", what, type(exc).__name__, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def where(url: str) -> str:
    """`host:port/db` (every host of a multi-host URL), for messages: never the credentials."""
    parts = urlsplit(url)
    try:
        hosts = hosts_of(url)
    except ValueError:
        hosts = []
    named = ",".join(f"{host or 'local socket'}:{port or 5432}" for host, port in hosts)
    return f"{named or 'local socket:5432'}{parts.path}"


def describe_connect_error(url: str, exc: BaseException) -> str:
    reason = exc.__class__.__name__
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"database unreachable at {where(url)}: {reason}{': ' + message if message else ''}"


async def migrate(
    url: str, migrations: Sequence[Migration] | None = None, *, retry_seconds: float = 0.0
) -> list[str]:
    """Apply pending migrations as the owner role; return the versions applied now.

    Raises `MigrationChanged`, applying nothing, when an applied file was edited since.
    Rows from before checksums were recorded get the file's current hash (earlier edits
    cannot be known). With `retry_seconds`, a run that cannot connect or loses its
    connection (a failover) starts again for that long: each file commits with its row in
    `schema_migrations`, so a new run applies only what the lost one had not."""
    pending_source = list(migrations) if migrations is not None else discover_migrations()
    applied_now: list[str] = []

    async def run() -> list[str]:
        conn = await connect_raw(url)
        try:
            await _apply(conn, pending_source, applied_now)
        finally:
            await _close_quietly(conn)
        return applied_now

    return await with_retries(run, retry_seconds, "migrate")


async def _close_quietly(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return
    try:
        await conn.close(timeout=5)
    except Exception:  # a connection lost mid-run: nothing left to close cleanly
        conn.terminate()


async def _apply(
    conn: asyncpg.Connection, pending_source: list[Migration], applied_now: list[str]
) -> None:
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(CREATE_MIGRATIONS_TABLE)
        await conn.execute(ADD_CHECKSUM_COLUMN)
        recorded = await _recorded_checksums(conn)
        check_checksums(pending_source, recorded)
        backfill = [
            (m.version, m.checksum)
            for m in pending_source
            if m.version in recorded and recorded[m.version] is None
        ]
        if backfill:
            await conn.executemany(
                "UPDATE schema_migrations SET checksum = $2 WHERE version = $1", backfill
            )
            logger.info("migration checksums recorded", extra={"migrations": len(backfill)})
        for migration in pending_source:
            if migration.version in recorded:
                continue
            sql, checksum = migration.load()
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    migration.version,
                    checksum,
                )
            applied_now.append(migration.version)
            logger.info("migration applied", extra={"version": migration.version})
        await conn.execute(GRANT_MIGRATIONS_READ)
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def _recorded_checksums(conn: asyncpg.Connection) -> dict[str, str | None]:
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


def check_checksums(migrations: Sequence[Migration], recorded: dict[str, str | None]) -> None:
    """Raise `MigrationChanged` naming every applied file whose content changed."""
    changed = [m for m in migrations if recorded.get(m.version) not in (None, m.checksum)]
    if changed:
        names = ", ".join(m.path.name for m in changed)
        raise MigrationChanged(
            f"migration file(s) changed after they were applied: {names} in "
            f"{changed[0].path.parent} (restore them; put a change in a new migration)"
        )


async def check_applied_migrations(
    url: str, directory: Path | None = None, *, retry_seconds: float = 0.0
) -> None:
    """What `serve` checks before it starts: no applied migration's file has changed. A
    database without the bookkeeping (never migrated, or not since checksums) passes."""
    conn = await connect_raw(url, connect_timeout=5, retry_seconds=retry_seconds)
    try:
        recorded = await _recorded_checksums(conn)
    except (
        asyncpg.UndefinedTableError,
        asyncpg.UndefinedColumnError,
        asyncpg.InsufficientPrivilegeError,  # granted by the first `migrate` since checksums
    ):
        return
    finally:
        await conn.close()
    check_checksums(discover_migrations(directory), recorded)


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
    """The asyncpg pool underneath `databases`: the one place that reaches its internals
    (the postgres backend keeps the pool as `_pool`). `databases` owns the pool's lifecycle
    (`connect`, `disconnect`); every acquire goes through here.

    Not its public `database.connection()`: that connection belongs to the task, so a second
    `connection()` in the same task would get the first one back (an "independent" audit
    record would join the caller's transaction and roll back with it), it has no acquire
    timeout of its own, and the rate-limit store (app/ratelimit) takes the pool itself.
    Cost is not the reason: its acquire and release measured 3.5 us more CPU (40.6 against
    37.1 us), lost in the noise once a `SELECT 1` runs (121.5 against 125.0 us;
    docs/benchmarks.md, `python -m bench.poolapi`).
    """
    pool: asyncpg.Pool | None = getattr(database._backend, "_pool", None)
    if pool is None:
        raise DatabaseUnavailable("the database pool is not connected")
    return pool


ACQUIRE_TIMEOUT_SECONDS = 5.0
# Failures after which a pooled connection cannot be trusted again. A read-only refusal
# (SQLSTATE 25006) means the server it reaches is a standby now: a new connection finds the
# writable one.
_BROKEN = (
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    OSError,
)


@contextlib.asynccontextmanager
async def connection(database: Database) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own (never shared with another caller in this task).

    Failing to get one at all (server down, refusing connections, pool exhausted past its
    timeout) raises `DatabaseUnavailable`, which the app answers with 503.
    """
    pool = pool_of(database)
    try:
        with timings.phase("pool_wait"):
            conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS)
    except (asyncpg.PostgresError, asyncpg.InternalClientError, OSError, TimeoutError) as exc:
        # InternalClientError: no host is writable now (TargetServerAttributeNotMatched).
        raise DatabaseUnavailable(f"no database connection: {type(exc).__name__}") from exc
    DB_POOL_IN_USE.inc()
    try:
        yield conn
    except _BROKEN:
        conn.terminate()  # the pool replaces it instead of handing it out again
        raise
    finally:
        DB_POOL_IN_USE.dec()
        await pool.release(conn)


@contextlib.asynccontextmanager
async def transaction(database: Database) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction: committed on success, rolled back on any error."""
    async with connection(database) as conn, conn.transaction():
        yield conn
