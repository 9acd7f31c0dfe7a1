"""Databases for development and tests: find or start a Postgres server, then provision a
fresh database with the two roles the service expects (owner for migrations, an app login
that is a member of `bff_app`). Never used by the production app."""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from app.core.db import asyncpg_dsn, migrate

LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_credentials(
    url: str, *, user: str | None = None, password: str | None = None, database: str | None = None
) -> str:
    """The same server with another user, password or database (host and options kept)."""
    parts = urlsplit(asyncpg_dsn(url))
    host = parts.netloc.rpartition("@")[2]
    old_user, _, old_password = parts.netloc.rpartition("@")[0].partition(":")
    user = user if user is not None else old_user
    password = password if password is not None else (old_password or None)
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    netloc = f"{auth}@{host}" if auth else host
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


async def server_answers(url: str, timeout: float = 2.0) -> bool:  # noqa: ASYNC109
    try:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """A throwaway Postgres in a temporary directory (the `pgserver` package); its URL.

    Importing pgserver asks platformdirs for a runtime directory (its lock file); without
    XDG_RUNTIME_DIR (containers, CI, su) platformdirs warns and falls back to a private
    directory under /tmp, which serves as well: that warning is silenced here, at the import.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", category=UserWarning)
            from pgserver.postgres_server import get_server
    except ImportError:
        raise RuntimeError(
            "no Postgres available: set DATABASE_URL, run one on 127.0.0.1:5432, "
            "or `pip install pgserver` for a throwaway embedded server"
        ) from None
    directory = tempfile.mkdtemp(prefix="bff-pg-")
    server: Any = get_server(directory, cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@dataclass(frozen=True)
class ProvisionedDatabase:
    admin_url: str
    name: str
    owner_url: str
    app_url: str
    app_role: str


async def provision(admin_url: str, name: str | None = None) -> ProvisionedDatabase:
    """Create a fresh database, apply migrations as the owner, and add an app login role."""
    name = name or f"bff_{secrets.token_hex(6)}"
    app_role = f"{name}_app"
    password = secrets.token_urlsafe(18)
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    owner_url = with_credentials(admin_url, database=name)
    await migrate(owner_url)
    owner = await asyncpg.connect(asyncpg_dsn(owner_url))
    try:
        # Role names cannot be bound parameters; both are generated here, never user input.
        await owner.execute(
            f"CREATE ROLE \"{app_role}\" LOGIN PASSWORD '{password}' IN ROLE bff_app"
        )
        await owner.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{name}" TO "{app_role}"')
    finally:
        await owner.close()
    app_url = with_credentials(owner_url, user=app_role, password=password)
    return ProvisionedDatabase(admin_url, name, owner_url, app_url, app_role)


async def drop(db: ProvisionedDatabase) -> None:
    admin = await asyncpg.connect(asyncpg_dsn(db.admin_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{db.app_role}"')
    finally:
        await admin.close()
