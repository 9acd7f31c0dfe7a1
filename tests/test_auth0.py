"""The Auth0 client: token cache, retry policy, breaker, profile cache, paths and bodies.

Auth0 is stubbed at the transport with `respx`; each test asserts the requests it captured.
Time is fake: `sleep` records what the client asked for and moves both clocks on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import respx

from app.auth0.management import Auth0Client
from app.core.errors import (
    Conflict,
    NotFound,
    UpstreamError,
    UpstreamUnavailable,
    ValidationFailed,
)
from app.core.settings import Settings
from app.dev.keys import TokenMinter
from app.dev.tenant import TenantState, create_tenant_app

BASE = "http://tenant.test"
USER = "auth0|abc"
USER_PATH = "/api/v2/users/auth0%7Cabc"
PROFILE = {"user_id": USER, "email": "abc@example.com", "name": "abc"}


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": "postgresql://x@127.0.0.1/db",
        "auth0_domain": "tenant.example.com",
        "auth0_audience": "https://api.example.com",
        "auth0_client_id": "cid",
        "auth0_client_secret": "secret",
        "auth0_base_url": BASE,
        **overrides,
    }
    return Settings(_env_file=None, **values)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_700_000_000.5
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def token_route(mock: respx.MockRouter) -> respx.Route:
    return mock.post("/oauth/token").respond(
        json={"access_token": "m2m-1", "expires_in": 86400, "token_type": "Bearer"}
    )


def make_client(http: httpx.AsyncClient, fake: FakeTime, **settings: Any) -> Auth0Client:
    return Auth0Client(
        make_settings(**settings),
        http,
        sleep=fake.sleep,
        clock=fake.clock,
        wall_clock=fake.time,
        rand=lambda: 0.0,
    )


def tokens(token: str, expires_in: int = 86400) -> httpx.Response:
    return httpx.Response(200, json={"access_token": token, "expires_in": expires_in})


def bearer(call: Any) -> str:
    return str(call.request.headers.get("authorization"))


def raw_path(call: Any) -> str:
    """The path as sent on the wire (httpx's `url.path` is percent-decoded)."""
    return str(call.request.url.raw_path.decode().split("?")[0])


def sent_json(call: Any) -> Any:
    return json.loads(call.request.content)


# --- M2M token ----------------------------------------------------------------------------


async def test_token_by_client_credentials_for_the_management_audience(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).respond(json=PROFILE)
    client = make_client(http, fake)

    assert await client.get_user(USER) == PROFILE

    assert sent_json(token_route.calls.last) == {
        "grant_type": "client_credentials",
        "client_id": "cid",
        "client_secret": "secret",
        "audience": "https://tenant.example.com/api/v2/",
    }
    assert bearer(users.calls.last) == "Bearer m2m-1"
    assert [raw_path(c) for c in mock.calls] == ["/oauth/token", USER_PATH]


async def test_200_concurrent_calls_fetch_one_token(
    mock: respx.MockRouter, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # every caller arrives while the fetch is in flight
        return tokens("m2m-1")

    token_route = mock.post("/oauth/token").mock(side_effect=slow_token)
    users = mock.get(url__regex=r"/api/v2/users/.+").respond(json=PROFILE)
    client = make_client(http, fake)

    results = await asyncio.gather(*(client.get_user(f"auth0|u{i}") for i in range(200)))

    assert len(results) == 200
    assert token_route.call_count == 1
    assert client.stats["token_requests"] == 1
    assert users.call_count == 200
    assert {bearer(call) for call in users.calls} == {"Bearer m2m-1"}


async def test_failed_token_fetch_fails_every_waiter_with_one_request(
    mock: respx.MockRouter, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    async def refused(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        return httpx.Response(401, json={"error": "access_denied"})

    token_route = mock.post("/oauth/token").mock(side_effect=refused)
    users = mock.get(url__regex=r"/api/v2/users/.+").respond(json=PROFILE)
    client = make_client(http, fake)

    results = await asyncio.gather(
        *(client.get_user(f"auth0|u{i}") for i in range(20)), return_exceptions=True
    )

    assert all(isinstance(r, UpstreamError) for r in results)
    assert "secret" not in str(results[0])
    assert token_route.call_count == 1
    assert users.call_count == 0


async def test_token_renewed_shortly_before_expiry(
    mock: respx.MockRouter, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    token_route = mock.post("/oauth/token").mock(
        side_effect=[tokens("m2m-1", 3600), tokens("m2m-2", 3600)]
    )
    users = mock.get(USER_PATH).respond(json=PROFILE)
    client = make_client(http, fake, profile_cache_seconds=0)

    await client.get_user(USER)
    fake.advance(3539)  # 61 s before expiry: still good
    await client.get_user(USER)
    fake.advance(2)  # inside the last minute: renew
    await client.get_user(USER)

    assert token_route.call_count == 2
    assert [bearer(c) for c in users.calls] == ["Bearer m2m-1", "Bearer m2m-1", "Bearer m2m-2"]


async def test_401_drops_the_stale_token_and_retries_once(
    mock: respx.MockRouter, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    mock.post("/oauth/token").mock(side_effect=[tokens("m2m-1"), tokens("m2m-2")])
    mock.get(USER_PATH).mock(
        side_effect=[
            httpx.Response(401, json={"message": "Invalid token"}),
            httpx.Response(200, json=PROFILE),
        ]
    )
    client = make_client(http, fake)

    assert await client.get_user(USER) == PROFILE

    assert [(raw_path(c), c.request.headers.get("authorization")) for c in mock.calls] == [
        ("/oauth/token", None),
        (USER_PATH, "Bearer m2m-1"),
        ("/oauth/token", None),
        (USER_PATH, "Bearer m2m-2"),
    ]
    assert fake.sleeps == []


async def test_401_twice_is_502_after_one_renewal(
    mock: respx.MockRouter, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    token_route = mock.post("/oauth/token").mock(side_effect=[tokens("m2m-1"), tokens("m2m-2")])
    users = mock.get(USER_PATH).respond(401, json={"message": "Invalid token"})
    client = make_client(http, fake)

    with pytest.raises(UpstreamError):
        await client.get_user(USER)

    assert token_route.call_count == 2
    assert users.call_count == 2


async def test_401_on_a_post_is_retried_once_since_auth0_did_nothing(
    mock: respx.MockRouter, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    mock.post("/oauth/token").mock(side_effect=[tokens("m2m-1"), tokens("m2m-2")])
    jobs = mock.post("/api/v2/jobs/verification-email").mock(
        side_effect=[httpx.Response(401), httpx.Response(201, json={"id": "job_1"})]
    )
    client = make_client(http, fake)

    assert await client.send_verification_email(USER) == {"id": "job_1"}
    assert [bearer(c) for c in jobs.calls] == ["Bearer m2m-1", "Bearer m2m-2"]


async def test_a_late_401_does_not_drop_the_already_renewed_token(
    mock: respx.MockRouter, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    token_route = mock.post("/oauth/token").mock(
        side_effect=[tokens("m2m-1"), tokens("m2m-2"), tokens("m2m-3")]
    )
    late = asyncio.Event()

    async def by_token(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] != "Bearer m2m-1":
            return httpx.Response(200, json=PROFILE)
        if request.url.raw_path.endswith(b"late"):
            await late.wait()
        return httpx.Response(401)

    mock.get(url__regex=r"/api/v2/users/.+").mock(side_effect=by_token)
    client = make_client(http, fake)

    slow = asyncio.create_task(client.get_user("auth0|late"))
    await asyncio.sleep(0.01)
    await client.get_user("auth0|early")  # 401, renews to m2m-2
    late.set()
    await slow  # its 401 is about m2m-1, so m2m-2 stays

    assert token_route.call_count == 2


# --- Retries --------------------------------------------------------------------------------


async def test_429_waits_until_x_ratelimit_reset_then_succeeds(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    reset = str(int(fake.wall) + 2)  # 1.5 s from the fake wall clock
    users = mock.get(USER_PATH).mock(
        side_effect=[
            httpx.Response(429, headers={"x-ratelimit-reset": reset}),
            httpx.Response(200, json=PROFILE),
        ]
    )
    client = make_client(http, fake)

    assert await client.get_user(USER) == PROFILE
    assert fake.sleeps == [1.5]
    assert users.call_count == 2
    assert client.stats["retries"] == 1


async def test_429_retry_after_seconds_wins_over_reset(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    headers = {"retry-after": "1", "x-ratelimit-reset": str(int(fake.wall) + 60)}
    mock.get(USER_PATH).mock(
        side_effect=[httpx.Response(429, headers=headers), httpx.Response(200, json=PROFILE)]
    )
    client = make_client(http, fake)

    await client.get_user(USER)
    assert fake.sleeps == [1.0]


async def test_429_past_the_budget_is_503_with_retry_after_and_no_second_request(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    reset = str(int(fake.wall) + 10)  # 9.5 s away; the budget is 3 s
    users = mock.get(USER_PATH).respond(429, headers={"x-ratelimit-reset": reset})
    client = make_client(http, fake)

    with pytest.raises(UpstreamUnavailable) as caught:
        await client.get_user(USER)

    assert caught.value.status == 503
    assert caught.value.headers["Retry-After"] == "10"
    assert users.call_count == 1
    assert fake.sleeps == []


async def test_waits_add_up_to_the_budget_and_no_more(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).respond(429, headers={"retry-after": "1"})
    client = make_client(http, fake, auth0_retry_budget_seconds=2.5)

    with pytest.raises(UpstreamUnavailable) as caught:
        await client.get_user(USER)

    assert fake.sleeps == [1.0, 1.0]  # a third wait would pass 2.5 s
    assert users.call_count == 3
    assert caught.value.headers["Retry-After"] == "1"


async def test_jitter_is_added_but_stays_inside_the_budget(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    mock.get(USER_PATH).mock(side_effect=[httpx.Response(500), httpx.Response(200, json=PROFILE)])
    client = Auth0Client(
        make_settings(auth0_retry_budget_seconds=0.3),
        http,
        sleep=fake.sleep,
        clock=fake.clock,
        wall_clock=fake.time,
        rand=lambda: 1.0,
    )

    await client.get_user(USER)
    assert fake.sleeps == [pytest.approx(0.3)]  # 0.2 backoff + jitter clipped to the budget


async def test_500_then_success(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).mock(
        side_effect=[httpx.Response(500, text="oops"), httpx.Response(200, json=PROFILE)]
    )
    client = make_client(http, fake)

    assert await client.get_user(USER) == PROFILE
    assert users.call_count == 2
    assert fake.sleeps == [0.2]


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"), httpx.ConnectError("down")]
)
async def test_timeout_or_network_error_then_success_for_a_get(
    mock: respx.MockRouter,
    token_route: respx.Route,
    http: httpx.AsyncClient,
    fake: FakeTime,
    error: Exception,
) -> None:
    users = mock.get(USER_PATH).mock(side_effect=[error, httpx.Response(200, json=PROFILE)])
    client = make_client(http, fake)

    assert await client.get_user(USER) == PROFILE
    assert users.call_count == 2


async def test_every_call_carries_the_configured_timeout(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).respond(json=PROFILE)
    client = make_client(http, fake, auth0_timeout_seconds=1.5)

    await client.get_user(USER)

    for call in (token_route.calls.last, users.calls.last):
        timeout = call.request.extensions["timeout"]
        assert timeout["connect"] == 1.5
        assert timeout["read"] == 1.5


async def test_patch_is_retried_with_the_same_body(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    patch = mock.patch(USER_PATH).mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json=PROFILE)]
    )
    client = make_client(http, fake)

    await client.update_user(USER, {"nickname": "a", "user_metadata": {"phone_number": "1"}})

    assert patch.call_count == 2
    assert sent_json(patch.calls[0]) == sent_json(patch.calls[1])
    assert sent_json(patch.calls[1]) == {"nickname": "a", "user_metadata": {"phone_number": "1"}}


async def test_delete_of_roles_is_retried(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    roles = mock.delete(USER_PATH + "/roles").mock(
        side_effect=[httpx.Response(503), httpx.Response(204)]
    )
    client = make_client(http, fake)

    await client.remove_roles(USER, ["rol_1"])

    assert roles.call_count == 2
    assert [sent_json(c) for c in roles.calls] == [{"roles": ["rol_1"]}] * 2


@pytest.mark.parametrize(
    "failure",
    [
        lambda: httpx.Response(500),
        lambda: httpx.Response(429, headers={"retry-after": "1"}),
        lambda: httpx.ReadTimeout("slow"),
    ],
)
@pytest.mark.parametrize("call", ["verification", "assign_roles", "password_reset"])
async def test_post_is_never_retried(
    mock: respx.MockRouter,
    token_route: respx.Route,
    http: httpx.AsyncClient,
    fake: FakeTime,
    failure: Callable[[], httpx.Response | Exception],
    call: str,
) -> None:
    client = make_client(http, fake)
    actions: dict[str, tuple[str, Callable[[], Awaitable[object]]]] = {
        "verification": (
            "/api/v2/jobs/verification-email",
            lambda: client.send_verification_email(USER),
        ),
        "assign_roles": (USER_PATH + "/roles", lambda: client.assign_roles(USER, ["rol_1"])),
        "password_reset": (
            "/dbconnections/change_password",
            lambda: client.request_password_reset("a@example.com"),
        ),
    }
    path, action = actions[call]
    route = mock.post(path).mock(side_effect=[failure(), httpx.Response(200, json={})])

    with pytest.raises(UpstreamUnavailable) as caught:
        await action()

    assert route.call_count == 1
    assert fake.sleeps == []
    assert caught.value.headers["Retry-After"] == "1"


# --- Answers we cannot use ------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>maintenance</html>"),
        httpx.Response(200, json=["not", "a", "user"]),
    ],
)
async def test_non_json_or_wrong_shape_is_502(
    mock: respx.MockRouter,
    token_route: respx.Route,
    http: httpx.AsyncClient,
    fake: FakeTime,
    response: httpx.Response,
) -> None:
    mock.get(USER_PATH).mock(return_value=response)
    client = make_client(http, fake)

    with pytest.raises(UpstreamError) as caught:
        await client.get_user(USER)

    assert caught.value.status == 502
    assert "maintenance" not in caught.value.detail


async def test_unusable_token_response_is_502(
    mock: respx.MockRouter, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    mock.post("/oauth/token").respond(json={"token_type": "Bearer"})
    users = mock.get(USER_PATH).respond(json=PROFILE)
    client = make_client(http, fake)

    with pytest.raises(UpstreamError):
        await client.get_user(USER)
    assert users.call_count == 0


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, ValidationFailed), (404, NotFound), (409, Conflict), (403, UpstreamError)],
)
async def test_client_errors_map_to_our_errors_without_auth0s_text(
    mock: respx.MockRouter,
    token_route: respx.Route,
    http: httpx.AsyncClient,
    fake: FakeTime,
    status: int,
    error: type[Exception],
) -> None:
    patch = mock.patch(USER_PATH).respond(status, json={"message": "picture bad: http://x"})
    client = make_client(http, fake)

    with pytest.raises(error) as caught:
        await client.update_user(USER, {"picture": "x"})

    assert "picture bad" not in str(caught.value)
    assert patch.call_count == 1


# --- Circuit breaker ------------------------------------------------------------------------


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


# --- Profile cache --------------------------------------------------------------------------


async def test_profile_cache_hit_within_ttl_and_invalidated_by_update(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).respond(json=PROFILE)
    mock.patch(USER_PATH).respond(json={**PROFILE, "nickname": "new"})
    client = make_client(http, fake)

    await client.get_user(USER)
    fake.advance(29)
    await client.get_user(USER)
    assert users.call_count == 1

    await client.update_user(USER, {"nickname": "new"})
    await client.get_user(USER)
    assert users.call_count == 2

    fake.advance(31)
    await client.get_user(USER)
    assert users.call_count == 3


async def test_profile_cache_can_be_disabled(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).respond(json=PROFILE)
    client = make_client(http, fake, profile_cache_seconds=0)

    await client.get_user(USER)
    await client.get_user(USER)
    assert users.call_count == 2


async def test_cached_profile_is_not_changed_by_the_callers_edits(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    mock.get(USER_PATH).respond(json=PROFILE)
    client = make_client(http, fake)

    (await client.get_user(USER))["email"] = "changed"
    first = await client.get_user(USER)
    first["name"] = "changed"
    assert await client.get_user(USER) == PROFILE


async def test_a_read_racing_an_update_is_not_cached(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    release = asyncio.Event()

    async def slow_old_profile(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json=PROFILE)

    users = mock.get(USER_PATH).mock(side_effect=slow_old_profile)
    mock.patch(USER_PATH).respond(json={**PROFILE, "name": "new"})
    client = make_client(http, fake)

    read = asyncio.create_task(client.get_user(USER))
    await asyncio.sleep(0.01)
    await client.update_user(USER, {"name": "new"})
    release.set()
    await read
    users.mock(return_value=httpx.Response(200, json={**PROFILE, "name": "new"}))

    assert (await client.get_user(USER))["name"] == "new"
    assert users.call_count == 2


# --- Paths, bodies, pagination --------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_id", "raw_path"),
    [
        ("auth0|abc", b"/api/v2/users/auth0%7Cabc"),
        ("oauth2|x/y z", b"/api/v2/users/oauth2%7Cx%2Fy%20z"),
    ],
)
async def test_user_id_is_url_encoded(
    mock: respx.MockRouter,
    token_route: respx.Route,
    http: httpx.AsyncClient,
    fake: FakeTime,
    user_id: str,
    raw_path: bytes,
) -> None:
    roles = mock.get(url__regex=r"/api/v2/users/.+/roles").respond(json=[])
    users = mock.get(url__regex=r"/api/v2/users/.+").respond(json=PROFILE)
    client = make_client(http, fake)

    await client.get_user(user_id)
    await client.get_user_roles(user_id)

    assert users.calls.last.request.url.raw_path == raw_path
    assert roles.calls.last.request.url.raw_path.startswith(raw_path + b"/roles?")


async def test_roles_are_read_across_pages(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    page0 = [{"id": f"rol_{i}", "name": str(i)} for i in range(100)]
    page1 = [{"id": "rol_last", "name": "last"}]
    roles = mock.get(USER_PATH + "/roles").mock(
        side_effect=[
            httpx.Response(200, json={"roles": page0, "total": 101, "start": 0, "limit": 100}),
            httpx.Response(200, json={"roles": page1, "total": 101, "start": 100, "limit": 100}),
        ]
    )
    client = make_client(http, fake)

    assert await client.get_user_roles(USER) == page0 + page1
    assert [dict(c.request.url.params) for c in roles.calls] == [
        {"per_page": "100", "page": "0", "include_totals": "true"},
        {"per_page": "100", "page": "1", "include_totals": "true"},
    ]


async def test_assign_and_remove_roles_send_role_ids(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    mock.post(USER_PATH + "/roles").respond(204)
    mock.delete(USER_PATH + "/roles").respond(204)
    client = make_client(http, fake)

    await client.assign_roles(USER, ["rol_1", "rol_2"])
    await client.remove_roles(USER, ("rol_2",))

    calls = [(c.request.method, raw_path(c), sent_json(c)) for c in mock.calls[1:]]
    assert calls == [
        ("POST", USER_PATH + "/roles", {"roles": ["rol_1", "rol_2"]}),
        ("DELETE", USER_PATH + "/roles", {"roles": ["rol_2"]}),
    ]
    assert all(c.request.headers["content-type"] == "application/json" for c in mock.calls[1:])


async def test_org_membership_follows_checkpoint_pages_and_stops_at_a_match(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    members = mock.get("/api/v2/organizations/org_1/members").mock(
        side_effect=[
            httpx.Response(200, json={"members": [{"user_id": "auth0|x"}], "next": "cp1"}),
            httpx.Response(200, json={"members": [{"user_id": USER}], "next": "cp2"}),
        ]
    )
    client = make_client(http, fake)

    assert await client.is_org_member("org_1", USER) is True
    params = [dict(c.request.url.params) for c in members.calls]
    assert params == [
        {"fields": "user_id", "include_fields": "true", "take": "100"},
        {"fields": "user_id", "include_fields": "true", "take": "100", "from": "cp1"},
    ]


async def test_org_membership_false_at_the_end_or_for_an_unknown_org(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    mock.get("/api/v2/organizations/org_1/members").respond(
        json={"members": [{"user_id": "auth0|x"}]}
    )
    mock.get("/api/v2/organizations/org_gone/members").respond(404)
    client = make_client(http, fake)

    assert await client.is_org_member("org_1", USER) is False
    assert await client.is_org_member("org_gone", USER) is False


async def test_verification_email_job(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    job = {"type": "verification_email", "status": "pending", "id": "job_1"}
    jobs = mock.post("/api/v2/jobs/verification-email").respond(201, json=job)
    client = make_client(http, fake)

    assert await client.send_verification_email(USER) == job
    assert sent_json(jobs.calls.last) == {"user_id": USER}


async def test_password_reset_uses_the_authentication_api_without_a_token(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    reset = mock.post("/dbconnections/change_password").respond(
        text="We've just sent you an email to reset your password."
    )
    client = make_client(http, fake, auth0_db_connection="Patients-DB")

    await client.request_password_reset("a@example.com")

    assert token_route.call_count == 0
    assert "authorization" not in reset.calls.last.request.headers
    assert sent_json(reset.calls.last) == {
        "client_id": "cid",
        "email": "a@example.com",
        "connection": "Patients-DB",
    }


async def test_logs_carry_no_token_secret_or_user_id(
    mock: respx.MockRouter,
    token_route: respx.Route,
    http: httpx.AsyncClient,
    fake: FakeTime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="app.auth0.client")
    mock.get(USER_PATH).mock(
        side_effect=[httpx.Response(500), httpx.ReadTimeout("x"), httpx.Response(200, json=PROFILE)]
    )
    mock.post("/dbconnections/change_password").respond(429, headers={"retry-after": "5"})
    client = make_client(http, fake)

    await client.get_user(USER)
    with pytest.raises(UpstreamUnavailable):
        await client.request_password_reset("a@example.com")

    assert "answered 500" in caplog.text
    for secret in ("m2m-1", "secret", "abc", "a@example.com"):
        assert secret not in caplog.text


# --- Against the stand-in tenant ------------------------------------------------------------


async def test_end_to_end_against_the_stand_in_tenant(fake: FakeTime) -> None:
    state = TenantState(
        minter=TokenMinter("tenant.example.com", "https://api.example.com"),
        client_id="cid",
        client_secret="secret",
        org_members={"org_1": {USER}},
    )
    transport = httpx.ASGITransport(app=create_tenant_app(state))
    async with httpx.AsyncClient(transport=transport) as http:
        client = make_client(http, fake)

        assert (await client.get_user(USER))["email"] == "abc@example.com"
        updated = await client.update_user(USER, {"user_metadata": {"phone_number": "1"}})
        assert updated["user_metadata"] == {"phone_number": "1"}
        assert (await client.get_user(USER))["user_metadata"] == {"phone_number": "1"}
        await client.assign_roles(USER, ["rol_admin"])
        assert [r["id"] for r in await client.get_user_roles(USER)] == ["rol_admin"]
        await client.remove_roles(USER, ["rol_admin"])
        assert await client.get_user_roles(USER) == []
        assert await client.is_org_member("org_1", USER) is True
        assert await client.is_org_member("org_1", "auth0|other") is False
        assert (await client.send_verification_email(USER))["status"] == "pending"
        await client.request_password_reset("abc@example.com")

        state.m2m_tokens.clear()  # the tenant forgets our token: one renewal, then on
        await client.get_user_roles(USER)

    assert state.counts["oauth_token"] == 2
    assert state.counts["get_user"] == 2
    assert state.counts["change_password"] == 1
