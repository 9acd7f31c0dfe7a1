"""The Management API budget (app/auth0/budget.py): at most COUNT calls in any SECONDS across
every copy, in Postgres and in Redis; `low` calls leave a reserve; the transport waits for a
slot within the wait budget or refuses with 503 + Retry-After."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from databases import Database

from app.auth0.budget import BudgetSpent, ManagementBudget, PostgresBudget, RedisBudget
from app.auth0.management import Auth0Client
from app.core.errors import UpstreamUnavailable
from app.core.settings import Quota
from tests.auth0.support import PROFILE, USER, USER_PATH, FakeTime, make_settings


async def admitted(budget: ManagementBudget, calls: int, priority: str = "normal") -> int:
    """How many of `calls` concurrent takes were admitted."""

    async def one() -> bool:
        try:
            await budget.take(priority)  # type: ignore[arg-type]
        except BudgetSpent:
            return False
        return True

    return sum(await asyncio.gather(*(one() for _ in range(calls))))


@pytest.fixture
async def redis_budget(redis_url: str) -> AsyncIterator[RedisBudget]:
    store = RedisBudget(redis_url, name=f"test-{uuid.uuid4().hex}")
    yield store
    await store.client.delete(store.key, store.key + ":seq")
    await store.aclose()


class TestPostgres:
    async def test_never_more_than_the_count_in_the_window(self, pool: Database) -> None:
        budget = ManagementBudget(Quota(5, 1), PostgresBudget(pool))
        assert await admitted(budget, 40) == 5
        with pytest.raises(BudgetSpent) as refused:
            await budget.take()
        assert 0 < refused.value.wait_seconds <= 1.05
        assert refused.value.status == 503
        assert refused.value.headers["Retry-After"] == str(math.ceil(refused.value.wait_seconds))

    async def test_a_slot_frees_when_its_call_leaves_the_window(self, pool: Database) -> None:
        budget = ManagementBudget(Quota(2, 0.3), PostgresBudget(pool))
        assert await admitted(budget, 5) == 2
        await asyncio.sleep(0.4)
        assert await admitted(budget, 5) == 2

    async def test_low_priority_leaves_a_quarter_to_normal_calls(self, pool: Database) -> None:
        budget = ManagementBudget(Quota(8, 60), PostgresBudget(pool))
        assert await admitted(budget, 20, "low") == 6
        assert await admitted(budget, 20, "normal") == 2

    async def test_two_copies_share_one_budget(self, pool: Database) -> None:
        other = Database(str(pool.url), min_size=1, max_size=3)
        await other.connect()
        try:
            one = ManagementBudget(Quota(6, 60), PostgresBudget(pool))
            two = ManagementBudget(Quota(6, 60), PostgresBudget(other))
            counts = await asyncio.gather(admitted(one, 10), admitted(two, 10))
        finally:
            await other.disconnect()
        assert sum(counts) == 6


class TestRedis:
    async def test_never_more_than_the_count_in_the_window(self, redis_budget: RedisBudget) -> None:
        budget = ManagementBudget(Quota(5, 1), redis_budget)
        assert await admitted(budget, 40) == 5
        with pytest.raises(BudgetSpent) as refused:
            await budget.take()
        assert 0 < refused.value.wait_seconds <= 1.05

    async def test_a_slot_frees_when_its_call_leaves_the_window(
        self, redis_budget: RedisBudget
    ) -> None:
        budget = ManagementBudget(Quota(2, 0.3), redis_budget)
        assert await admitted(budget, 5) == 2
        await asyncio.sleep(0.4)
        assert await admitted(budget, 5) == 2

    async def test_low_priority_leaves_a_quarter_to_normal_calls(
        self, redis_budget: RedisBudget
    ) -> None:
        budget = ManagementBudget(Quota(8, 60), redis_budget)
        assert await admitted(budget, 20, "low") == 6
        assert await admitted(budget, 20, "normal") == 2


def budget_client(http: httpx.AsyncClient, fake: FakeTime, budget: ManagementBudget) -> Auth0Client:
    return Auth0Client(
        make_settings(),
        http,
        budget=budget,
        sleep=fake.sleep,
        clock=fake.clock,
        wall_clock=fake.time,
        rand=lambda: 0.0,
    )


class FixedWaitStore:
    """Refuses the first `refusals` takes with `wait` seconds, then admits."""

    def __init__(self, refusals: int, wait: float) -> None:
        self.refusals, self.wait, self.takes = refusals, wait, 0

    async def take(self, window_seconds: float, limit: int, keep: int) -> float:
        self.takes += 1
        if self.takes <= self.refusals:
            return self.wait
        return 0.0


class TestTransport:
    async def test_a_call_waits_for_its_slot_within_the_wait_budget(
        self, mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient
    ) -> None:
        fake = FakeTime()
        users = mock.get(USER_PATH).respond(json=PROFILE)
        store = FixedWaitStore(refusals=2, wait=1.0)
        client = budget_client(http, fake, ManagementBudget(Quota(2, 1), store))
        assert await client.get_user(USER) == PROFILE
        assert fake.sleeps == [1.0, 1.0] and users.call_count == 1

    async def test_past_the_wait_budget_is_503_and_auth0_is_not_asked(
        self, mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient
    ) -> None:
        fake = FakeTime()
        users = mock.get(USER_PATH).respond(json=PROFILE)
        store = FixedWaitStore(refusals=10, wait=2.0)
        client = budget_client(http, fake, ManagementBudget(Quota(2, 1), store))
        with pytest.raises(UpstreamUnavailable) as refused:
            await client.get_user(USER)
        assert refused.value.headers["Retry-After"] == "2"
        assert fake.sleeps == [2.0] and users.call_count == 0

    async def test_a_call_that_may_not_wait_is_refused_at_once(
        self, mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient
    ) -> None:
        fake = FakeTime()
        users = mock.get(USER_PATH).respond(json=PROFILE)
        store = FixedWaitStore(refusals=1, wait=0.5)
        client = budget_client(http, fake, ManagementBudget(Quota(2, 1), store))
        with pytest.raises(BudgetSpent):
            await client.get_user(USER, wait=False)
        assert fake.sleeps == [] and users.call_count == 0

    async def test_every_attempt_takes_a_slot(
        self, mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient
    ) -> None:
        fake = FakeTime()
        mock.get(USER_PATH).mock(
            side_effect=[httpx.Response(503), httpx.Response(200, json=PROFILE)]
        )
        store = FixedWaitStore(refusals=0, wait=0)
        client = budget_client(http, fake, ManagementBudget(Quota(2, 1), store))
        assert await client.get_user(USER) == PROFILE
        assert store.takes == 2
