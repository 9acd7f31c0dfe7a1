"""A DPoP proof is accepted once across every copy of the service: two copies of the app on
one database (and on one Redis, when it holds the rate limits), a proof used on the first
and replayed on the second; and the replay stores themselves."""

from __future__ import annotations

import asyncio
import hashlib
import time

import asyncpg
import pytest
import respx
from databases import Database

from app.auth.replay import PostgresReplays, RedisReplays, purge_expired
from app.core.db import connection
from app.core.errors import DatabaseUnavailable, UpstreamUnavailable
from devkit.db import ProvisionedDatabase
from devkit.keys import TokenMinter
from tests.auth.dpop_support import PATIENTS, PUBLIC_URL, bound_client, challenge, remembered
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem

REPLAYED = "the proof was already used (its jti is not new)"


class TestTwoCopies:
    async def test_a_proof_replayed_on_another_copy_is_refused(
        self,
        database: ProvisionedDatabase,
        tenant: respx.MockRouter,
        minter: TokenMinter,
        owner: asyncpg.Connection,
    ) -> None:
        settings = make_settings(database, public_url=PUBLIC_URL)
        dpop = bound_client(minter)
        headers = dpop.headers()
        async with running_app(settings) as first, running_app(settings) as second:
            accepted = await first.get(PATIENTS, headers=headers)
            replayed = await second.get(PATIENTS, headers=headers)
            fresh = await second.get(PATIENTS, headers=dpop.headers())

        assert accepted.status_code == 200, accepted.text
        assert_problem(replayed, 401, detail=REPLAYED)
        assert replayed.headers["www-authenticate"] == challenge("invalid_dpop_proof", REPLAYED)
        assert fresh.status_code == 200
        assert await remembered(owner) == 2
        actions = [
            r["action"] for r in await owner.fetch("SELECT action FROM audit_events ORDER BY seq")
        ]
        assert actions == ["patient.searched", "access.denied", "patient.searched"]

    async def test_through_redis_when_it_holds_the_rate_limits(
        self,
        database: ProvisionedDatabase,
        tenant: respx.MockRouter,
        minter: TokenMinter,
        owner: asyncpg.Connection,
        redis_url: str,
    ) -> None:
        settings = make_settings(database, public_url=PUBLIC_URL, redis_url=redis_url)
        dpop = bound_client(minter)
        headers = dpop.headers()
        async with running_app(settings) as first, running_app(settings) as second:
            accepted = await first.get(PATIENTS, headers=headers)
            replayed = await second.get(PATIENTS, headers=headers)

        assert accepted.status_code == 200, accepted.text
        assert_problem(replayed, 401, detail=REPLAYED)
        assert await remembered(owner) == 0  # Redis holds them, Postgres none

    async def test_racing_copies_accept_a_proof_once(
        self,
        database: ProvisionedDatabase,
        tenant: respx.MockRouter,
        minter: TokenMinter,
        owner: asyncpg.Connection,
    ) -> None:
        settings = make_settings(database, public_url=PUBLIC_URL)
        dpop = bound_client(minter)
        headers = dpop.headers()
        async with running_app(settings) as first, running_app(settings) as second:
            answers = await asyncio.gather(
                *(copy.get(PATIENTS, headers=headers) for copy in [first, second] * 5)
            )
        assert sorted(a.status_code for a in answers) == [200] + [401] * 9
        assert await remembered(owner) == 1


def _key(n: int) -> bytes:
    return hashlib.sha256(b"proof-%d" % n).digest()


class TestPostgresStore:
    async def test_concurrent_proofs_share_statements_and_each_key_is_new_once(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        store = PostgresReplays(pool)
        until = time.time() + 60
        answers = await asyncio.gather(*(store.first_use(_key(n % 50), until) for n in range(200)))
        await store.aclose()

        assert sum(answers) == 50
        assert [answers[n] for n in range(50)] == [True] * 50  # the first of each
        assert store.statements < 200  # shared: far fewer statements than proofs
        assert await owner.fetchval("SELECT count(*) FROM dpop_proofs") == 50

    async def test_a_request_that_goes_away_still_uses_up_its_proof(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        store = PostgresReplays(pool, max_in_flight=1)
        until = time.time() + 60
        first = asyncio.create_task(store.first_use(_key(1), until))
        await asyncio.sleep(0)  # the first statement is on its way: the next keys queue
        gone = asyncio.create_task(store.first_use(_key(2), until))
        same_batch = asyncio.create_task(store.first_use(_key(2), until))  # a replay of it
        other = asyncio.create_task(store.first_use(_key(3), until))
        await asyncio.sleep(0)
        gone.cancel()  # its client went away while the key waited
        assert await first and await other
        assert not await same_batch  # the cancelled request's key was still written first
        await store.aclose()
        assert gone.cancelled()
        assert not await store.first_use(_key(2), until)  # and stays used
        assert await owner.fetchval("SELECT count(*) FROM dpop_proofs") == 3

    async def test_an_expired_key_is_new_again_and_purged(
        self, pool: Database, owner: asyncpg.Connection
    ) -> None:
        store = PostgresReplays(pool)
        assert await store.first_use(_key(1), time.time() - 1)  # already expired
        assert await store.first_use(_key(1), time.time() + 60)  # so new again
        assert not await store.first_use(_key(1), time.time() + 60)
        assert await store.first_use(_key(2), time.time() - 1)
        async with connection(pool) as conn:
            await purge_expired(conn)
        assert await owner.fetchval("SELECT count(*) FROM dpop_proofs") == 1

    async def test_a_database_outage_is_a_503_not_an_acceptance(
        self, database: ProvisionedDatabase
    ) -> None:
        store = PostgresReplays(Database(database.app_url))  # a pool never connected
        with pytest.raises(DatabaseUnavailable):
            await store.first_use(_key(1), time.time() + 60)


class TestRedisStore:
    async def test_each_key_is_new_once(self, redis_url: str) -> None:
        store = RedisReplays.from_url(redis_url)
        key = hashlib.sha256(str(time.time_ns()).encode()).digest()
        try:
            assert await store.first_use(key, time.time() + 60)
            assert not await store.first_use(key, time.time() + 60)
            ttl = await store.client.pttl(b"bff:dpop:" + key.hex().encode())
            assert 0 < ttl <= 60_000
        finally:
            await store.aclose()

    async def test_concurrent_proofs_share_round_trips_and_each_key_is_new_once(
        self, redis_url: str
    ) -> None:
        store = RedisReplays.from_url(redis_url)
        salt = str(time.time_ns())
        keys = [hashlib.sha256(f"{salt}/{n}".encode()).digest() for n in range(50)]
        try:
            until = time.time() + 60
            answers = await asyncio.gather(
                *(store.first_use(keys[n % 50], until) for n in range(200))
            )
            ttl = await store.client.pttl(b"bff:dpop:" + keys[7].hex().encode())
        finally:
            await store.aclose()

        assert sum(answers) == 50
        assert [answers[n] for n in range(50)] == [True] * 50  # the first of each
        assert store.statements < 200  # pipelined: far fewer round trips than proofs
        assert 0 < ttl <= 60_000

    async def test_a_request_that_goes_away_still_uses_up_its_proof(self, redis_url: str) -> None:
        store = RedisReplays.from_url(redis_url)
        until = time.time() + 60
        key = hashlib.sha256(b"gone-%f" % time.time()).digest()
        gone = asyncio.create_task(store.first_use(key, until))
        replay = asyncio.create_task(store.first_use(key, until))
        await asyncio.sleep(0)
        gone.cancel()
        assert not await replay  # in one pipeline after the cancelled request's SET NX
        assert gone.cancelled()
        assert not await store.first_use(key, until)
        await store.aclose()

    async def test_concurrent_proofs_on_an_unreachable_redis_are_all_503(self) -> None:
        store = RedisReplays.from_url("redis://127.0.0.1:1/0", timeout=0.5)
        try:
            answers = await asyncio.gather(
                *(store.first_use(_key(n), time.time() + 60) for n in range(20)),
                return_exceptions=True,
            )
        finally:
            await store.aclose()
        assert all(isinstance(a, UpstreamUnavailable) for a in answers)

    async def test_an_unreachable_redis_is_a_503(self) -> None:
        store = RedisReplays.from_url("redis://127.0.0.1:1/0", timeout=0.5)
        try:
            with pytest.raises(UpstreamUnavailable):
                await store.first_use(_key(1), time.time() + 60)
        finally:
            await store.aclose()
