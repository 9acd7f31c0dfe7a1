"""Migrations and the database roles."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from app.core.db import Migration, asyncpg_dsn, discover_migrations, migrate
from app.dev.db import ProvisionedDatabase


async def test_migrating_again_is_a_no_op(
    database: ProvisionedDatabase, owner: asyncpg.Connection
) -> None:
    before = await owner.fetch("SELECT version, applied_at FROM schema_migrations ORDER BY 1")
    assert [r["version"] for r in before] == [m.version for m in discover_migrations()]
    assert await migrate(database.owner_url) == []
    after = await owner.fetch("SELECT version, applied_at FROM schema_migrations ORDER BY 1")
    assert after == before


async def test_two_concurrent_migrators_apply_each_file_once(
    database: ProvisionedDatabase, owner: asyncpg.Connection, tmp_path: Path
) -> None:
    slow = tmp_path / "9000_slow.sql"
    slow.write_text("SELECT pg_sleep(0.3); CREATE TABLE race_marker (id int);")
    migrations = [*discover_migrations(), Migration("9000_slow", slow)]
    results = await asyncio.gather(
        migrate(database.owner_url, migrations), migrate(database.owner_url, migrations)
    )
    assert sorted(results, key=len) == [[], ["9000_slow"]]
    assert (
        await owner.fetchval("SELECT count(*) FROM schema_migrations WHERE version = '9000_slow'")
        == 1
    )


async def test_failed_migration_leaves_nothing_behind(
    database: ProvisionedDatabase, owner: asyncpg.Connection, tmp_path: Path
) -> None:
    broken = tmp_path / "9001_broken.sql"
    broken.write_text("CREATE TABLE half_done (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(
            database.owner_url, [*discover_migrations(), Migration("9001_broken", broken)]
        )
    assert await owner.fetchval("SELECT to_regclass('half_done')") is None
    assert (
        await owner.fetchval("SELECT count(*) FROM schema_migrations WHERE version = '9001_broken'")
        == 0
    )


async def test_app_role_cannot_change_audit_rows(
    database: ProvisionedDatabase, owner: asyncpg.Connection
) -> None:
    await owner.execute(
        "INSERT INTO audit_events (scope, action, crud, outcome, hash) "
        "VALUES ('s', 'user.registered', 'C', 'success', '\\x00')"
    )
    app = await asyncpg.connect(asyncpg_dsn(database.app_url))
    try:
        assert await app.fetchval("SELECT count(*) FROM audit_events") == 1
        # Only the append functions write (migrations/0009): not even INSERT.
        for statement in (
            "INSERT INTO audit_events (scope, action, crud, outcome, hash) "
            "VALUES ('s', 'user.registered', 'C', 'success', '\\x00')",
            "UPDATE audit_events SET actor = 'x'",
            "DELETE FROM audit_events",
            "TRUNCATE audit_events",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(statement)
    finally:
        await app.close()
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == 1


async def test_even_the_owner_cannot_update_delete_or_truncate_audit_rows(
    owner: asyncpg.Connection,
) -> None:
    await owner.execute(
        "INSERT INTO audit_events (scope, action, crud, outcome, hash) "
        "VALUES ('s', 'user.registered', 'C', 'success', '\\x00')"
    )
    partitions = [
        r["name"]
        for r in await owner.fetch(
            "SELECT inhrelid::regclass::text AS name FROM pg_inherits "
            "WHERE inhparent = 'audit_events'::regclass"
        )
    ]
    assert "audit_events_default" in partitions and len(partitions) >= 4
    for statement in [
        "UPDATE audit_events SET actor = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        *(f"TRUNCATE {p}" for p in partitions),
    ]:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await owner.execute(statement)
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == 1


async def test_insert_far_in_the_future_lands_in_the_default_partition(
    owner: asyncpg.Connection,
) -> None:
    await owner.execute(
        "INSERT INTO audit_events (scope, action, crud, outcome, hash, recorded_at) "
        "VALUES ('s', 'user.registered', 'C', 'success', '\\x00', now() + interval '5 years')"
    )
    assert await owner.fetchval("SELECT count(*) FROM audit_events_default") == 1


async def test_ensure_partitions_is_idempotent(owner: asyncpg.Connection) -> None:
    first = await owner.fetchval("SELECT audit_events_ensure_partitions(6)")
    again = await owner.fetchval("SELECT audit_events_ensure_partitions(6)")
    assert first == 3  # months 4..6 ahead; 0..3 exist since the migration
    assert again == 0
