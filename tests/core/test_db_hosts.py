"""A DATABASE_URL naming several hosts, a server that refuses writes, and retrying a
database that is away for a moment (a failover). The real primary and standby are in
tests/core/test_standby.py."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from databases import Database

from app.core.db import (
    asyncpg_dsn,
    connect_raw,
    connection,
    create_database,
    describe_connect_error,
    migrate,
    transaction,
)
from app.core.errors import DatabaseUnavailable
from app.core.settings.values import hosts_of
from devkit.db import ProvisionedDatabase

# Nothing listens on port 1 of the loopback: a host that is down (refused at once).
DOWN = "127.0.0.1:1"


def with_hosts(url: str, hosts: str, query: str = "") -> str:
    """`url` with its host part replaced by `hosts` (libpq's comma-separated list)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit((parts.scheme, f"{credentials}@{hosts}", parts.path, query, ""))


def real_host(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2]


# --- Parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("postgresql://u@h/d", [("h", None)]),
        ("postgresql://u:p@h1:5432,h2:5433/d", [("h1", 5432), ("h2", 5433)]),
        ("postgresql://u@h1,[::1]:6432,h3/d", [("h1", None), ("::1", 6432), ("h3", None)]),
        ("postgresql://u@/d?host=/run/postgresql", []),
    ],
)
def test_hosts_of_a_url(url: str, hosts: list[tuple[str, int | None]]) -> None:
    assert hosts_of(url) == hosts


def test_several_hosts_ask_for_the_writable_one_unless_the_url_says_otherwise() -> None:
    assert asyncpg_dsn("postgresql+asyncpg://u@h1,h2/d?sslmode=require") == (
        "postgresql://u@h1,h2/d?sslmode=require&target_session_attrs=read-write"
    )
    assert asyncpg_dsn("postgresql://u@h1,h2/d?target_session_attrs=any") == (
        "postgresql://u@h1,h2/d?target_session_attrs=any"
    )
    assert asyncpg_dsn("postgresql://u@h/d") == "postgresql://u@h/d"  # one host: as it was


def test_an_unreachable_multi_host_url_is_described_without_its_password() -> None:
    url = "postgresql://u:hunter2@h1:5432,h2:5433/d"
    message = describe_connect_error(url, ConnectionRefusedError("refused"))
    assert message == ("database unreachable at h1:5432,h2:5433/d: ConnectionRefusedError: refused")
    assert "hunter2" not in message


# --- Several hosts, one of them down -------------------------------------------------------


async def test_the_pool_skips_a_host_that_is_down(database: ProvisionedDatabase) -> None:
    url = with_hosts(database.app_url, f"{DOWN},{real_host(database.app_url)}")
    pool = create_database(url, min_size=1, max_size=2)
    await pool.connect()
    try:
        async with transaction(pool) as conn:
            assert await conn.fetchval("SELECT current_database()") == database.name
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
    finally:
        await pool.disconnect()


async def test_connect_raw_skips_a_host_that_is_down(database: ProvisionedDatabase) -> None:
    url = with_hosts(database.owner_url, f"{DOWN},{real_host(database.owner_url)}")
    conn = await connect_raw(url)
    try:
        assert await conn.fetchval("SELECT current_database()") == database.name
    finally:
        await conn.close()


async def test_every_host_down_is_database_unavailable_naming_them() -> None:
    with pytest.raises(DatabaseUnavailable) as caught:
        await connect_raw("postgresql://u:secret@127.0.0.1:1,127.0.0.1:2/d")
    assert str(caught.value).startswith("database unreachable at 127.0.0.1:1,127.0.0.1:2/d")
    assert "secret" not in str(caught.value)


# --- A server that refuses writes (what a standby answers: SQLSTATE 25006) -------------------


async def read_only(admin_url: str, name: str, on: bool, *, end_sessions: bool = True) -> None:
    """New sessions of `name` read-only (or not); with `end_sessions`, its open sessions
    ended too, as a demotion ends a former primary's connections."""
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await admin.execute(
            f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}'
        )
        if end_sessions:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await admin.close()


async def _revoke(pool: Database, pids: list[int]) -> None:
    """One write, noting which backend it reached in `pids`."""
    async with transaction(pool) as conn:
        pids.append(conn.get_server_pid())
        await conn.execute(
            "INSERT INTO revocations (kind, sub, value, expires_at) VALUES ('jti', 's', 'v', now())"
        )


async def test_a_connection_refused_as_read_only_is_never_handed_out_again(
    database: ProvisionedDatabase,
) -> None:
    await read_only(database.admin_url, database.name, on=True, end_sessions=False)
    pool = create_database(database.app_url, min_size=1, max_size=1)  # one connection
    await pool.connect()
    refused: list[int] = []
    try:
        with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
            await _revoke(pool, refused)
        async with connection(pool) as conn:
            assert conn.get_server_pid() != refused[0]
            live = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", refused[0]
            )
            assert live == 0  # closed, so the pool cannot hand it out again
    finally:
        await read_only(database.admin_url, database.name, on=False)
        await pool.disconnect()


async def test_a_read_only_host_is_not_chosen_when_the_url_asks_for_the_writable_one(
    database: ProvisionedDatabase,
) -> None:
    host = real_host(database.app_url)
    url = with_hosts(database.app_url, f"{host},{host}", "target_session_attrs=read-write")
    await read_only(database.admin_url, database.name, on=True, end_sessions=False)
    pool = create_database(url, min_size=0, max_size=1)
    await pool.connect()
    try:
        with pytest.raises(DatabaseUnavailable):  # both hosts read-only: none chosen
            async with connection(pool) as conn:
                await conn.fetchval("SELECT 1")
        await read_only(database.admin_url, database.name, on=False, end_sessions=False)
        async with connection(pool) as conn:
            assert await conn.fetchval("SELECT NOT current_setting('transaction_read_only')::bool")
    finally:
        await read_only(database.admin_url, database.name, on=False)
        await pool.disconnect()


# --- Retrying a database that is away for a moment ------------------------------------------


async def _allow_connections(admin_url: str, name: str, allow: bool) -> None:
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
    finally:
        await admin.close()


async def test_migrate_waits_for_a_database_that_comes_back(
    database: ProvisionedDatabase,
) -> None:
    await _allow_connections(database.admin_url, database.name, False)
    try:
        started = time.monotonic()
        run = asyncio.create_task(migrate(database.owner_url, retry_seconds=10))
        await asyncio.sleep(1.0)
        assert not run.done()  # still retrying, not failed
        await _allow_connections(database.admin_url, database.name, True)
        assert await asyncio.wait_for(run, 10) == []
        assert time.monotonic() - started >= 1.0
    finally:
        await _allow_connections(database.admin_url, database.name, True)


async def test_without_retry_seconds_an_unreachable_database_fails_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        await migrate(f"postgresql://u@{DOWN}/d")
    assert time.monotonic() - started < 2.0


async def test_retrying_gives_up_after_retry_seconds() -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        await connect_raw(f"postgresql://u@{DOWN}/d", retry_seconds=1.0)
    assert 0.5 <= time.monotonic() - started < 3.0
