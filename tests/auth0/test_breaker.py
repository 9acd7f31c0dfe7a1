"""The circuit breaker (app/auth0/breaker.py) in the client: it opens after failures, fails
fast, then lets one trial through.

Auth0 is stubbed at the transport with `respx`; each test asserts the requests it captured.
Time is fake: `sleep` records what the client asked for and moves both clocks on.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx
from prometheus_client import REGISTRY

from app.core.errors import NotFound, UpstreamUnavailable
from tests.auth0.support import PROFILE, USER, USER_PATH, FakeTime, make_client


async def test_breaker_opens_fails_fast_then_lets_one_trial_through(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).respond(500)
    client = make_client(
        http, fake, auth0_retry_budget_seconds=0, profile_cache_seconds=0
    )  # no retries: one request per call

    for _ in range(5):
        with pytest.raises(UpstreamUnavailable):
            await client.get_user(USER)
    assert users.call_count == 5

    with pytest.raises(UpstreamUnavailable) as caught:
        await client.get_user(USER)
    assert users.call_count == 5  # failed fast, no request
    assert caught.value.headers["Retry-After"] == "10"

    fake.advance(4)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.get_user(USER)
    assert caught.value.headers["Retry-After"] == "6"
    assert users.call_count == 5

    fake.advance(6)
    users.respond(json=PROFILE)
    assert await client.get_user(USER) == PROFILE  # the half-open trial succeeds: closed
    assert await client.get_user(USER) == PROFILE
    assert users.call_count == 7


async def test_failed_trial_reopens_the_breaker(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).mock(side_effect=httpx.ConnectError("down"))
    client = make_client(http, fake, auth0_retry_budget_seconds=0, auth0_breaker_failures=2)

    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await client.get_user(USER)
    fake.advance(10)
    with pytest.raises(UpstreamUnavailable):
        await client.get_user(USER)  # the trial, which fails
    assert users.call_count == 3

    with pytest.raises(UpstreamUnavailable):
        await client.get_user(USER)
    assert users.call_count == 3  # open again at once, without waiting for 2 more failures


async def test_half_open_admits_a_single_trial(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    release = asyncio.Event()

    async def slow_ok(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json=PROFILE)

    users = mock.get(url__regex=r"/api/v2/users/.+").mock(side_effect=httpx.ConnectError("x"))
    client = make_client(http, fake, auth0_retry_budget_seconds=0, auth0_breaker_failures=1)
    with pytest.raises(UpstreamUnavailable):
        await client.get_user("auth0|a")
    fake.advance(10)
    users.mock(side_effect=slow_ok)

    trial = asyncio.create_task(client.get_user("auth0|trial"))
    await asyncio.sleep(0.01)
    with pytest.raises(UpstreamUnavailable):  # while the trial runs, others fail fast
        await asyncio.wait_for(client.get_user("auth0|b"), 1)
    release.set()
    assert (await trial)["user_id"] == USER
    assert users.call_count == 2


async def test_4xx_answers_do_not_open_the_breaker(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).respond(404)
    client = make_client(http, fake, auth0_breaker_failures=2)

    for _ in range(4):
        with pytest.raises(NotFound):
            await client.get_user(USER)
    assert users.call_count == 4


def _breaker_metrics() -> tuple[float, float]:
    """`auth0_breaker_openings_total` and `auth0_breaker_open`, as a scrape would read them."""
    openings = REGISTRY.get_sample_value("auth0_breaker_openings_total")
    is_open = REGISTRY.get_sample_value("auth0_breaker_open")
    return openings or 0.0, is_open or 0.0


async def test_every_opening_is_counted_even_when_a_scrape_would_miss_it(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    """The gauge says "open" only for the cool-down; the counter keeps every opening, so an
    alert sees one that opened and closed between two scrapes."""
    users = mock.get(USER_PATH).mock(side_effect=httpx.ConnectError("down"))
    client = make_client(http, fake, auth0_retry_budget_seconds=0, auth0_breaker_failures=2)
    openings, _ = _breaker_metrics()

    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await client.get_user(USER)
    assert _breaker_metrics() == (openings + 1, 1.0)

    fake.advance(10)
    with pytest.raises(UpstreamUnavailable):
        await client.get_user(USER)  # the trial fails: open again
    assert _breaker_metrics() == (openings + 2, 1.0)

    fake.advance(10)
    users.mock(side_effect=None, return_value=httpx.Response(200, json=PROFILE))
    assert await client.get_user(USER) == PROFILE  # the trial succeeds: closed
    assert _breaker_metrics() == (openings + 2, 0.0)
