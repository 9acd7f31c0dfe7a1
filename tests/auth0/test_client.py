"""The transport to Auth0 (app/auth0/client.py): the M2M token, the retry policy and its wait
budget, answers we cannot use, and what the logs leave out.

Auth0 is stubbed at the transport with `respx`; each test asserts the requests it captured.
Time is fake: `sleep` records what the client asked for and moves both clocks on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
import pytest
import respx

from app.auth0.management import Auth0Client
from app.core.errors import Conflict, NotFound, UpstreamError, UpstreamUnavailable, ValidationFailed
from tests.auth0.support import (
    PROFILE,
    USER,
    USER_PATH,
    FakeTime,
    bearer,
    make_client,
    make_settings,
    raw_path,
    sent_json,
    tokens,
)

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
    job = {"type": "verification_email", "status": "pending", "id": "job_1"}
    jobs = mock.post("/api/v2/jobs/verification-email").mock(
        side_effect=[httpx.Response(401), httpx.Response(201, json=job)]
    )
    client = make_client(http, fake)

    assert await client.send_verification_email(USER) == job
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


# --- Logs -----------------------------------------------------------------------------------


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
