"""The checkpoint feed's watermark (app/audit/query.py `fetch_feed`): an event still being
written holds the feed back, so a puller never skips one."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from app.audit.events import Actor, Event
from app.audit.query import fetch_feed
from app.audit.record import record_event
from app.core.db import asyncpg_dsn
from devkit.db import ProvisionedDatabase
from tests.audit.support import ACTOR, abandoned, record


class TestWatermark:
    async def test_an_in_flight_writer_holds_the_feed_back_until_it_commits(
        self, app_pool: asyncpg.Pool
    ) -> None:
        other = Actor(scope="org:other")
        async with app_pool.acquire() as slow, app_pool.acquire() as reader:
            transaction = slow.transaction()
            await transaction.start()
            await record_event(slow, other, Event("patient.created", "C"))
            # A later seq in the reader's scope commits first.
            await record(app_pool, ACTOR, Event("patient.read", "R"))
            rows, next_seq, watermark = await fetch_feed(reader, ACTOR.scope, 0, 100)
            assert rows == [] and next_seq == 0 and watermark == 0
            await transaction.commit()
            rows, next_seq, watermark = await fetch_feed(reader, ACTOR.scope, 0, 100)
            assert [r["action"] for r in rows] == ["patient.read"]
            assert next_seq == watermark == rows[0]["seq"]

    async def test_a_rolled_back_writer_releases_the_watermark(
        self, app_pool: asyncpg.Pool
    ) -> None:
        with pytest.raises(RuntimeError):
            await abandoned(app_pool, Actor(scope="org:other"), Event("patient.read", "R"))
        await record(app_pool, ACTOR, Event("patient.read", "R"))
        async with app_pool.acquire() as reader:
            rows, _, watermark = await fetch_feed(reader, ACTOR.scope, 0, 100)
        assert len(rows) == 1 and watermark == rows[0]["seq"]

    async def test_unrelated_long_transactions_do_not_stall_it(
        self, app_pool: asyncpg.Pool
    ) -> None:
        async with app_pool.acquire() as busy, busy.transaction():
            await busy.execute("INSERT INTO registrations (auth0_user_id) VALUES ('auth0|busy')")
            await record(app_pool, ACTOR, Event("patient.read", "R"))
            async with app_pool.acquire() as reader:
                rows, _, _ = await fetch_feed(reader, ACTOR.scope, 0, 100)
            assert len(rows) == 1

    async def test_writers_in_other_databases_do_not_count(
        self, app_pool: asyncpg.Pool, database: ProvisionedDatabase
    ) -> None:
        elsewhere = await asyncpg.connect(asyncpg_dsn(database.admin_url))
        try:
            async with elsewhere.transaction():
                await elsewhere.execute(
                    "SELECT pg_advisory_xact_lock_shared((x'4155'::bigint << 48) | 1)"
                )
                await record(app_pool, ACTOR, Event("patient.read", "R"))
                async with app_pool.acquire() as reader:
                    rows, _, _ = await fetch_feed(reader, ACTOR.scope, 0, 100)
                assert len(rows) == 1
        finally:
            await elsewhere.close()

    async def test_pullers_lose_nothing_while_writers_commit_out_of_order(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection
    ) -> None:
        """Writers in many scopes hold their transactions open for random times, so seq
        numbers commit out of order; a global puller and a per-scope puller, both bounded
        by the watermark, must between them see every committed event exactly once."""
        scopes = [f"org:w{i}" for i in range(6)]
        done = asyncio.Event()
        rng = random.Random(5)

        class Abandoned(Exception):
            pass

        async def writer(n: int) -> None:
            for i in range(15):
                scope = scopes[(n + i) % len(scopes)]
                try:
                    async with app_pool.acquire() as conn, conn.transaction():
                        await record_event(conn, Actor(scope=scope), Event("patient.read", "R"))
                        await asyncio.sleep(rng.random() * 0.02)
                        if rng.random() < 0.1:
                            raise Abandoned  # some transactions roll back, leaving gaps
                except Abandoned:
                    pass

        async def global_puller() -> list[int]:
            seen: list[int] = []
            after = 0
            async with app_pool.acquire() as conn:
                while True:
                    finished = done.is_set()
                    watermark = await conn.fetchval("SELECT audit_events_watermark()")
                    rows = await conn.fetch(
                        "SELECT seq FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq",
                        after,
                        watermark,
                    )
                    seen += [r["seq"] for r in rows]
                    after = max(after, watermark)
                    if finished:
                        return seen
                    await asyncio.sleep(0.003)

        async def scope_puller(scope: str) -> list[int]:
            seen: list[int] = []
            after = 0
            async with app_pool.acquire() as conn:
                while True:
                    finished = done.is_set()
                    rows, after, _ = await fetch_feed(conn, scope, after, 7)
                    seen += [r["seq"] for r in rows]
                    if finished and not rows:
                        return seen
                    await asyncio.sleep(0.002)

        pullers = [
            asyncio.create_task(global_puller()),
            asyncio.create_task(scope_puller(scopes[0])),
        ]
        await asyncio.gather(*(writer(n) for n in range(12)))
        done.set()
        everything, scoped = await asyncio.gather(*pullers)
        committed = [
            r["seq"] for r in await owner.fetch("SELECT seq FROM audit_events ORDER BY seq")
        ]
        assert everything == committed
        in_scope = [
            r["seq"]
            for r in await owner.fetch(
                "SELECT seq FROM audit_events WHERE scope = $1 ORDER BY seq", scopes[0]
            )
        ]
        assert scoped == in_scope
