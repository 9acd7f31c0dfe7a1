"""The profile page within Auth0's limits (app/account/cached_profiles.py): the filtered
profile kept once for every copy, served fresh, served stale while it is refetched or while
the Management API budget is spent, fetched once for many concurrent misses on many copies,
and never past the budget."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import respx
from prometheus_client import REGISTRY

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.account.test_flows_profile import USER_PATH, auth0_user, insert_patients
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.fixtures.standin import StandIn
from tests.fixtures.tenant import LOG_STREAM_TOKEN
from tests.helpers import assert_problem, audit_rows, bearer

USER = "auth0|user-1"


def reads(result: str) -> float:
    """`profile_cache_reads_total` of this process for `result`."""
    return REGISTRY.get_sample_value("profile_cache_reads_total", {"result": result}) or 0.0


async def cached_row(owner: asyncpg.Connection, user_id: str = USER) -> asyncpg.Record | None:
    return await owner.fetchrow(
        "SELECT profile::text AS profile, fetched_at FROM auth0_profiles WHERE user_id = $1",
        user_id,
    )


async def age_back(owner: asyncpg.Connection, seconds: float, user_id: str = USER) -> None:
    """Make the cached copy `seconds` old, as if fetched that long ago."""
    await owner.execute(
        "UPDATE auth0_profiles SET fetched_at = now() - make_interval(secs => $2)"
        " WHERE user_id = $1",
        user_id,
        seconds,
    )


async def until(check: Callable[[], Any], seconds: float = 5.0) -> None:
    """Wait until the async `check` answers something true (a background refresh)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, "it did not happen in time"
        await asyncio.sleep(0.02)


class TestSharedCopy:
    async def test_a_fresh_profile_is_served_from_the_copy_with_its_age(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        get = tenant.route(method="GET", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, json=auth0_user())
        )
        before = {r: reads(r) for r in ("miss", "fresh")}
        first = await client.get("/api/profile", headers=bearer(mint(USER)))
        await asyncio.sleep(1.1)
        second = await client.get("/api/profile", headers=bearer(mint(USER)))
        assert first.status_code == second.status_code == 200
        assert get.call_count == 1
        assert {r: reads(r) - before[r] for r in before} == {"miss": 1, "fresh": 1}
        assert first.headers["age"] == "0" and first.json()["meta"]["profile_age_seconds"] == 0
        assert int(second.headers["age"]) >= 1
        assert second.json()["meta"]["profile_age_seconds"] == int(second.headers["age"])
        assert second.json()["profile"] == first.json()["profile"]

    async def test_only_the_fields_a_frontend_may_see_are_kept(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        tenant.route(method="GET", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, json=auth0_user())
        )
        assert (await client.get("/api/profile", headers=bearer(mint(USER)))).status_code == 200
        row = await cached_row(owner)
        assert row is not None
        kept = orjson.loads(row["profile"])
        assert kept["nickname"] == "one"
        assert kept["user_metadata"] == {"phone_number": "+15551234567"}
        for hidden in ("app_metadata", "identities", "last_ip", "idp-secret-token", "internal"):
            assert hidden not in row["profile"]

    async def test_an_update_is_what_every_copy_serves_next(
        self,
        settings: Settings,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        get = tenant.route(method="GET", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, json=auth0_user())
        )
        tenant.route(method="PATCH", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, json=auth0_user(nickname="renamed"))
        )
        token = bearer(mint(USER))
        async with running_app(settings) as one, running_app(settings) as two:
            assert (await two.get("/api/profile", headers=token)).json()["profile"][
                "nickname"
            ] == "one"
            updated = await one.patch("/api/profile", headers=token, json={"nickname": "renamed"})
            assert updated.status_code == 200, updated.text
            after = await two.get("/api/profile", headers=token)
        assert after.json()["profile"]["nickname"] == "renamed"
        assert get.call_count == 1  # the update's answer was kept: no second read

    async def test_a_stale_profile_is_served_at_once_and_refetched_behind(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        get = tenant.route(method="GET", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, json=auth0_user())
        )
        token = bearer(mint(USER))
        assert (await client.get("/api/profile", headers=token)).status_code == 200
        await age_back(owner, 3600)
        get.mock(return_value=httpx.Response(200, json=auth0_user(nickname="newer")))

        stale = await client.get("/api/profile", headers=token)
        assert stale.status_code == 200
        assert stale.json()["profile"]["nickname"] == "one"
        assert int(stale.headers["age"]) >= 3600

        async def refreshed() -> bool:
            row = await cached_row(owner)
            return row is not None and "newer" in row["profile"]

        await until(refreshed)
        fresh = await client.get("/api/profile", headers=token)
        assert fresh.json()["profile"]["nickname"] == "newer"
        assert int(fresh.headers["age"]) < 60
        assert get.call_count == 2

    async def test_auth0_rate_limiting_a_miss_is_503_never_its_429(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        await insert_patients(owner, f"user:{USER}", 2)
        tenant.route(method="GET", path__regex=USER_PATH).mock(
            return_value=httpx.Response(429, headers={"Retry-After": "30"}, json={})
        )
        response = await client.get("/api/profile", headers=bearer(mint(USER)))
        assert_problem(response, 503)
        assert int(response.headers["retry-after"]) >= 1
        assert await audit_rows(owner, "patient.read") == []
        assert await cached_row(owner) is None or (await cached_row(owner))["profile"] is None


class TestBudget:
    @pytest.fixture
    def settings(self, database: ProvisionedDatabase) -> Settings:
        return make_settings(database, auth0_management_rate="1/60")

    async def test_no_budget_and_no_copy_is_503_with_retry_after(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        await insert_patients(owner, f"user:{USER}", 1)
        await insert_patients(owner, "user:auth0|user-2", 2)
        get = tenant.route(method="GET", path__regex=r"^/api/v2/users/").mock(
            side_effect=lambda request: httpx.Response(200, json=auth0_user())
        )
        spent = await client.get("/api/profile", headers=bearer(mint(USER)))
        assert spent.status_code == 200  # the budget's one call
        refused = await client.get("/api/profile", headers=bearer(mint("auth0|user-2")))
        problem = assert_problem(refused, 503)
        assert "budget" in problem["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 61  # the window and its margin
        assert get.call_count == 1
        # The first page was read and recorded; the refused one showed and recorded nothing.
        assert [r["actor"] for r in await audit_rows(owner, "patient.read")] == [USER]

    async def test_no_budget_but_a_stale_copy_is_served_with_its_age(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        get = tenant.route(method="GET", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, json=auth0_user())
        )
        token = bearer(mint(USER))
        assert (await client.get("/api/profile", headers=token)).status_code == 200
        await age_back(owner, 7200)
        for _ in range(3):
            stale = await client.get("/api/profile", headers=token)
            assert stale.status_code == 200
            assert int(stale.headers["age"]) >= 7200
        await asyncio.sleep(0.2)  # any refresh behind them has had its chance
        assert get.call_count == 1


class TestChangesAtAuth0:
    async def test_a_log_saying_the_user_changed_makes_the_copy_refetched(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
    ) -> None:
        get = tenant.route(method="GET", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, json=auth0_user())
        )
        token = bearer(mint(USER))
        assert (await client.get("/api/profile", headers=token)).status_code == 200
        before = await cached_row(owner)
        date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        logs = [
            {  # an admin updated the user through the Management API
                "log_id": "L-sapi",
                "data": {
                    "type": "sapi",
                    "date": date,
                    "log_id": "L-sapi",
                    "details": {"request": {"method": "patch", "path": f"/api/v2/users/{USER}"}},
                },
            },
            {  # someone else's password change: their copy, not ours
                "log_id": "L-scp",
                "data": {"type": "scp", "date": date, "log_id": "L-scp", "user_id": "auth0|x"},
            },
        ]
        delivered = await client.post(
            "/hooks/auth0/log-stream", headers={"Authorization": LOG_STREAM_TOKEN}, json=logs
        )
        assert delivered.status_code == 200, delivered.text
        after = await cached_row(owner)
        assert before is not None and after is not None
        assert after["fetched_at"] < before["fetched_at"]
        get.mock(return_value=httpx.Response(200, json=auth0_user(nickname="by-admin")))
        assert (await client.get("/api/profile", headers=token)).status_code == 200

        async def refreshed() -> bool:
            row = await cached_row(owner)
            return row is not None and "by-admin" in row["profile"]

        await until(refreshed)
        assert get.call_count == 2


@contextlib.asynccontextmanager
async def copies(settings: Settings, count: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running_app(settings)) for _ in range(count)]


class TestManyCopies:
    """Ten copies of the service on one database, against the stand-in tenant's own count."""

    async def test_twenty_concurrent_misses_for_one_user_make_one_call(
        self, database: ProvisionedDatabase, standin: StandIn, mint: Callable[..., str]
    ) -> None:
        settings = make_settings(
            database, auth0_management_rate="15/1", db_pool_min_size=1, db_pool_max_size=2
        )
        token = bearer(mint("auth0|newcomer"))
        async with copies(settings, 10) as apps:
            answers = await asyncio.gather(
                *(apps[i % 10].get("/api/profile", headers=token) for i in range(20))
            )
        assert [a.status_code for a in answers] == [200] * 20
        assert {a.json()["profile"]["user_id"] for a in answers} == {"auth0|newcomer"}
        assert standin.state.counts["get_user"] == 1

    async def test_the_budget_holds_across_copies_under_load(
        self, database: ProvisionedDatabase, standin: StandIn, mint: Callable[..., str]
    ) -> None:
        settings = make_settings(
            database, auth0_management_rate="3/1", db_pool_min_size=1, db_pool_max_size=2
        )
        tokens = [bearer(mint(f"auth0|load-{n}")) for n in range(40)]
        statuses: list[int] = []
        async with copies(settings, 10) as apps:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2.5
            round_ = 0
            while loop.time() < deadline:
                answers = await asyncio.gather(
                    *(
                        apps[(round_ + i) % 10].get("/api/profile", headers=tokens[i])
                        for i in range(len(tokens))
                    )
                )
                statuses += [a.status_code for a in answers]
                round_ += 1
        assert set(statuses) <= {200, 503}
        assert statuses.count(200) >= 3  # the budget was used, not refused wholesale
        calls = len(standin.state.management_calls)
        assert calls >= 3
        assert standin.state.busiest_window(1.0) <= 3
