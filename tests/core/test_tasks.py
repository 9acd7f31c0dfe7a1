"""Every periodic purge in one place (app/core/tasks.py), against a real database."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from databases import Database

from app.core.db import create_database
from app.core.settings import Settings
from app.core.tasks import Housekeeping, Purge
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import running_app

EXPIRED = [
    ("idempotency_keys", "SELECT count(*) FROM idempotency_keys"),
    ("revocations", "SELECT count(*) FROM revocations"),
    ("sign_in_sessions", "SELECT count(*) FROM sign_in_sessions"),
    ("auth0_log_ids", "SELECT count(*) FROM auth0_log_ids"),
]


async def seed_expired(owner: asyncpg.Connection) -> None:
    """One expired row in each table a purge looks after (and nothing live)."""
    await owner.execute(
        "INSERT INTO idempotency_keys (caller, idempotency_key, request_hash, expires_at)"
        " VALUES ('auth0|a', 'k1', '\\x00', now() - interval '1 hour')"
    )
    await owner.execute(
        "INSERT INTO revocations (kind, sub, value, expires_at)"
        " VALUES ('jti', 'auth0|a', 'old', now() - interval '1 hour')"
    )
    await owner.execute(
        "INSERT INTO sign_in_sessions (session_key, auth0_user_id, expires_at)"
        " VALUES ('sid:old', 'auth0|a', now() - interval '1 hour')"
    )
    await owner.execute(
        "INSERT INTO auth0_log_ids (log_id, ingested_at) VALUES ('old', now() - interval '1 year')"
    )


async def counts(owner: asyncpg.Connection) -> dict[str, int]:
    return {table: await owner.fetchval(query) for table, query in EXPIRED}


class TestHousekeeping:
    async def test_runs_every_purge_and_a_failing_one_stops_no_other(
        self, pool: Database, owner: asyncpg.Connection, caplog: pytest.LogCaptureFixture
    ) -> None:
        await owner.execute(
            "INSERT INTO idempotency_keys (caller, idempotency_key, request_hash, expires_at)"
            " VALUES ('auth0|a', 'old', '\\x00', now() - interval '1 hour'),"
            " ('auth0|a', 'live', '\\x00', now() + interval '1 hour')"
        )
        ran: list[str] = []

        async def broken(conn: asyncpg.Connection) -> None:
            ran.append("broken")
            await conn.execute("SELECT * FROM no_such_table")

        async def idempotency(conn: asyncpg.Connection) -> None:
            ran.append("idempotency")
            await conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= now()")

        housekeeping = Housekeeping(pool, [Purge("broken", broken), Purge("keys", idempotency)])
        with caplog.at_level(logging.ERROR, logger="app.core.tasks"):
            failed = await housekeeping.run_once()
        assert failed == ["broken"]
        assert ran == ["broken", "idempotency"]
        keys = await owner.fetch("SELECT idempotency_key FROM idempotency_keys")
        assert [r["idempotency_key"] for r in keys] == ["live"]
        assert any("purge broken failed" in r.getMessage() for r in caplog.records)

    async def test_a_database_that_is_down_skips_the_round(
        self, database: ProvisionedDatabase, caplog: pytest.LogCaptureFixture
    ) -> None:
        down = create_database(database.app_url.replace(":5432/", ":1/"), min_size=1, max_size=1)
        ran: list[str] = []

        async def job(conn: asyncpg.Connection) -> None:
            ran.append("job")

        housekeeping = Housekeeping(down, [Purge("job", job)])
        with caplog.at_level(logging.WARNING, logger="app.core.tasks"):
            assert await housekeeping.run_once() == ["job"]
        assert ran == []
        assert any("database unavailable" in r.getMessage() for r in caplog.records)

    async def test_the_app_purges_what_expired_when_it_starts(
        self, settings: Settings, owner: asyncpg.Connection
    ) -> None:
        await seed_expired(owner)
        assert set((await counts(owner)).values()) == {1}
        async with running_app(settings):
            for _ in range(100):  # the first round runs in the background at start
                if set((await counts(owner)).values()) == {0}:
                    break
                await asyncio.sleep(0.05)
        assert await counts(owner) == {table: 0 for table, _ in EXPIRED}

    async def test_stop_ends_the_loop(self, pool: Database) -> None:
        rounds = asyncio.Event()

        async def job(conn: asyncpg.Connection) -> None:
            rounds.set()

        housekeeping = Housekeeping(pool, [Purge("job", job)], interval=0.01)
        housekeeping.start()
        await asyncio.wait_for(rounds.wait(), timeout=5)
        await housekeeping.stop()
        after = housekeeping.rounds
        await asyncio.sleep(0.05)
        assert housekeeping.rounds == after
