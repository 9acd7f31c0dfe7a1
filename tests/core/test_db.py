"""Migrations and the database roles."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import shutil
from pathlib import Path

import asyncpg
import pytest

from app.core.db import (
    Migration,
    MigrationChanged,
    asyncpg_dsn,
    check_applied_migrations,
    discover_migrations,
    migrate,
)
from devkit.db import ProvisionedDatabase


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


# --- Migration checksums -----------------------------------------------------------------


def _copy_migrations(tmp_path: Path) -> Path:
    copy = tmp_path / "migrations"
    copy.mkdir()
    for migration in discover_migrations():
        shutil.copy(migration.path, copy / migration.path.name)
    return copy


async def test_each_applied_migration_records_its_files_sha256(
    owner: asyncpg.Connection,
) -> None:
    recorded = dict(await owner.fetch("SELECT version, checksum FROM schema_migrations"))
    assert recorded == {
        m.version: hashlib.sha256(m.path.read_bytes()).hexdigest() for m in discover_migrations()
    }


async def test_an_edited_migration_stops_migrate_and_nothing_is_applied(
    database: ProvisionedDatabase, owner: asyncpg.Connection, tmp_path: Path
) -> None:
    copy = _copy_migrations(tmp_path)
    edited = next(copy.glob("0003_*.sql"))
    edited.write_text(edited.read_text() + "\n-- an afterthought\n")
    (copy / "9002_new.sql").write_text("CREATE TABLE new_after_edit (id int);")
    before = await owner.fetch("SELECT version, checksum FROM schema_migrations ORDER BY 1")

    with pytest.raises(MigrationChanged) as refused:
        await migrate(database.owner_url, discover_migrations(copy))

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"migration file(s) changed after they were applied: {edited.name}")
    assert str(copy) in message and "0001_" not in message
    assert await owner.fetchval("SELECT to_regclass('new_after_edit')") is None
    after = await owner.fetch("SELECT version, checksum FROM schema_migrations ORDER BY 1")
    assert after == before


async def test_a_new_file_applies_once_the_edit_is_undone(
    database: ProvisionedDatabase, owner: asyncpg.Connection, tmp_path: Path
) -> None:
    copy = _copy_migrations(tmp_path)
    edited = next(copy.glob("0002_*.sql"))
    original = edited.read_bytes()
    edited.write_bytes(original.replace(b"\n", b"\r\n"))  # even line endings count
    new = copy / "9003_new.sql"
    new.write_text("CREATE TABLE applied_after_restore (id int);")
    with pytest.raises(MigrationChanged, match=edited.name):
        await migrate(database.owner_url, discover_migrations(copy))

    edited.write_bytes(original)
    assert await migrate(database.owner_url, discover_migrations(copy)) == ["9003_new"]
    assert await owner.fetchval("SELECT to_regclass('applied_after_restore')") is not None
    assert (
        await owner.fetchval("SELECT checksum FROM schema_migrations WHERE version = '9003_new'")
        == hashlib.sha256(new.read_bytes()).hexdigest()
    )


async def test_a_database_migrated_before_checksums_gets_them_at_the_next_run(
    database: ProvisionedDatabase, owner: asyncpg.Connection, tmp_path: Path
) -> None:
    # As the runner left it before checksums: no column.
    await owner.execute("ALTER TABLE schema_migrations DROP COLUMN checksum")
    copy = _copy_migrations(tmp_path)
    assert await migrate(database.owner_url, discover_migrations(copy)) == []
    recorded = dict(await owner.fetch("SELECT version, checksum FROM schema_migrations"))
    assert recorded == {m.version: m.checksum for m in discover_migrations(copy)}

    # From then on an edit is caught.
    edited = next(copy.glob("0001_*.sql"))
    edited.write_text(edited.read_text() + "\n-- later\n")
    with pytest.raises(MigrationChanged, match=edited.name):
        await migrate(database.owner_url, discover_migrations(copy))


async def test_serve_check_reads_the_bookkeeping_as_the_app_role(
    database: ProvisionedDatabase, tmp_path: Path
) -> None:
    copy = _copy_migrations(tmp_path)
    await check_applied_migrations(database.app_url, copy)  # intact: passes

    (copy / "9004_pending.sql").write_text("SELECT 1;")  # not applied yet: not its business
    await check_applied_migrations(database.app_url, copy)

    edited = next(copy.glob("0005_*.sql"))
    edited.write_text("-- rewritten\n")
    with pytest.raises(MigrationChanged, match=edited.name):
        await check_applied_migrations(database.app_url, copy)


async def test_serve_check_passes_a_database_from_before_checksums(
    database: ProvisionedDatabase, owner: asyncpg.Connection, tmp_path: Path
) -> None:
    await owner.execute("ALTER TABLE schema_migrations DROP COLUMN checksum")
    await check_applied_migrations(database.owner_url, _copy_migrations(tmp_path))


# --- databases --------------------------------------------------------------------------


class _PrivateAccess(ast.NodeVisitor):
    """Where (innermost function, else `<module>`) a module names `databases`' internals."""

    PRIVATE = frozenset({"_backend", "_pool", "_connection", "_global_connection"})

    def __init__(self) -> None:
        self.scopes = ["<module>"]
        self.found: set[str] = set()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scopes.append(node.name)
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Attribute(self, node: ast.Attribute) -> None:
        own = isinstance(node.value, ast.Name) and node.value.id == "self"  # a class's own
        if node.attr in self.PRIVATE and not own:
            self.found.add(self.scopes[-1])
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:  # getattr(x, "_pool")
        if node.value in self.PRIVATE:
            self.found.add(self.scopes[-1])


def test_only_pool_of_reaches_into_databases() -> None:
    """`databases` is reached through its public API, except in one function (its docstring
    says why): `app.core.db.pool_of`."""
    app_dir = Path(__file__).resolve().parents[2] / "app"
    reached: set[str] = set()
    for path in sorted(app_dir.rglob("*.py")):
        visitor = _PrivateAccess()
        visitor.visit(ast.parse(path.read_text(), str(path)))
        reached |= {f"{path.relative_to(app_dir.parent)}:{scope}" for scope in visitor.found}
    assert reached == {"app/core/db.py:pool_of"}
