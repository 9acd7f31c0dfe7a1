"""auth0-python as the Management API client: it sends the requests, over the app's shared
`httpx.AsyncClient`, and does nothing on its own: no retry, no token, no sleep. Every answer
goes through our policy (app/auth0/client.py), which the metrics count.

Auth0 is stubbed at the transport with `respx`; each test asserts the requests it captured.
Time is fake: `sleep` records what the client asked for and moves both clocks on.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable

import httpx
import pytest
import respx
from prometheus_client import REGISTRY

from app.core.errors import NotFound, UpstreamError, UpstreamUnavailable
from tests.auth0.support import PROFILE, USER, USER_PATH, FakeTime, bearer, make_client, tokens

ROLES_PATH = USER_PATH + "/roles"
MEMBER_ROLES_PATH = "/api/v2/organizations/org_1/members/auth0%7Cabc/roles"
JOB = {"type": "verification_email", "status": "pending", "id": "job_1"}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def role_page(roles: list[dict[str, str]], start: int, total: int) -> httpx.Response:
    return httpx.Response(
        200, json={"roles": roles, "start": start, "limit": len(roles), "total": total}
    )


# --- The SDK sends, over our client ---------------------------------------------------------


async def test_the_request_is_the_sdks_and_goes_over_the_shared_client(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).respond(json=PROFILE)
    client = make_client(http, fake)

    assert await client.get_user(USER) == PROFILE

    sent = users.calls.last.request
    telemetry = json.loads(base64.b64decode(sent.headers["auth0-client"]))
    assert telemetry["name"] == "auth0-python"
    assert sent.headers["user-agent"].startswith("Python/")
    assert bearer(users.calls.last) == "Bearer m2m-1"


async def test_the_sdk_sends_through_the_client_it_was_given(fake: FakeTime) -> None:
    seen: list[str] = []

    def tenant(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        if request.url.path == "/oauth/token":
            return tokens("m2m-1")
        return httpx.Response(200, json=PROFILE)

    # No respx here: only this client's own transport can answer.
    async with httpx.AsyncClient(transport=httpx.MockTransport(tenant)) as shared:
        assert await make_client(shared, fake).get_user(USER) == PROFILE

    assert seen == ["/oauth/token", USER_PATH]


async def test_a_user_reads_back_as_auth0_sent_it(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    user = {
        **PROFILE,
        "created_at": "2024-05-01T10:20:30.000Z",
        "updated_at": "2026-11-01T09:30:00.123Z",
        "given_name": None,
        "identities": [{"provider": "auth0", "user_id": "abc", "isSocial": False}],
        "user_metadata": {"address": {"city": "Lyon"}},
        "a_field_the_sdk_does_not_know": [1, 2],
    }
    mock.get(USER_PATH).respond(json=user)
    client = make_client(http, fake)

    assert await client.get_user(USER) == user


async def test_an_sdk_call_outside_our_policy_sends_nothing(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).respond(json=PROFILE)
    client = make_client(http, fake)

    with pytest.raises(RuntimeError, match=r"inside Auth0Transport\.call"):
        await client.sdk.users.get(USER)

    assert users.call_count == 0
    assert token_route.call_count == 0


# --- No retrying of its own -------------------------------------------------------------------


async def test_one_503_is_not_retried_by_the_sdk_when_our_budget_is_spent(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).mock(
        side_effect=[httpx.Response(503), httpx.Response(200, json=PROFILE)]
    )
    client = make_client(http, fake, auth0_retry_budget_seconds=0)

    with pytest.raises(UpstreamUnavailable):
        await client.get_user(USER)

    assert users.call_count == 1
    assert fake.sleeps == []


async def test_one_503_on_a_read_is_retried_once_by_our_policy(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    page = [{"id": "rol_1", "name": "one"}]
    roles = mock.get(ROLES_PATH).mock(
        side_effect=[httpx.Response(503), role_page(page, 0, 1), role_page([], 1, 1)]
    )
    client = make_client(http, fake)

    assert await client.get_user_roles(USER) == page

    assert roles.call_count == 2
    assert fake.sleeps == [0.2]  # our backoff (the SDK's would be about 1 s)


@pytest.mark.parametrize("call", ["verification_email", "assign_roles", "assign_member_roles"])
async def test_one_503_on_a_post_is_not_retried(
    mock: respx.MockRouter,
    token_route: respx.Route,
    http: httpx.AsyncClient,
    fake: FakeTime,
    call: str,
) -> None:
    client = make_client(http, fake)
    actions: dict[str, tuple[str, Callable[[], Awaitable[object]]]] = {
        "verification_email": (
            "/api/v2/jobs/verification-email",
            lambda: client.send_verification_email(USER),
        ),
        "assign_roles": (ROLES_PATH, lambda: client.assign_roles(USER, ["rol_1"])),
        "assign_member_roles": (
            MEMBER_ROLES_PATH,
            lambda: client.assign_member_roles("org_1", USER, ["rol_1"]),
        ),
    }
    path, action = actions[call]
    route = mock.post(path).mock(side_effect=[httpx.Response(503), httpx.Response(201, json=JOB)])

    with pytest.raises(UpstreamUnavailable):
        await action()

    assert route.call_count == 1
    assert fake.sleeps == []


async def test_member_role_removal_is_retried_after_a_timeout(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    route = mock.delete(MEMBER_ROLES_PATH).mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(204)]
    )
    client = make_client(http, fake)

    await client.remove_member_roles("org_1", USER, ["rol_1"])

    assert route.call_count == 2
    assert [json.loads(c.request.content) for c in route.calls] == [{"roles": ["rol_1"]}] * 2


# --- Tokens and rate limits through the SDK ---------------------------------------------------


async def test_401_on_a_roles_page_renews_the_token_once_and_retries(
    mock: respx.MockRouter, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    token_route = mock.post("/oauth/token").mock(side_effect=[tokens("m2m-1"), tokens("m2m-2")])
    page = [{"id": "rol_1", "name": "one"}]
    roles = mock.get(ROLES_PATH).mock(
        side_effect=[httpx.Response(401, json={"message": "Invalid token"}), role_page(page, 0, 1)]
    )
    client = make_client(http, fake)

    assert await client.get_user_roles(USER) == page

    assert token_route.call_count == 2
    assert [bearer(c) for c in roles.calls] == ["Bearer m2m-1", "Bearer m2m-2"]
    assert fake.sleeps == []


async def test_429_on_the_second_page_waits_retry_after_then_reads_on(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    first = [{"id": f"rol_{i}", "name": str(i)} for i in range(100)]
    last = [{"id": "rol_last", "name": "last"}]
    roles = mock.get(MEMBER_ROLES_PATH).mock(
        side_effect=[
            role_page(first, 0, 101),
            httpx.Response(429, headers={"retry-after": "2"}),
            role_page(last, 100, 101),
        ]
    )
    client = make_client(http, fake)

    assert await client.get_member_roles("org_1", USER) == first + last

    assert [c.request.url.params["page"] for c in roles.calls] == ["0", "1", "1"]
    assert fake.sleeps == [2.0]


async def test_org_members_rate_limit_honours_x_ratelimit_reset(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    reset = str(int(fake.wall) + 2)  # 1.5 s from the fake wall clock
    members = mock.get("/api/v2/organizations/org_1/members").mock(
        side_effect=[
            httpx.Response(429, headers={"x-ratelimit-reset": reset}),
            httpx.Response(200, json={"members": [{"user_id": USER}]}),
        ]
    )
    client = make_client(http, fake)

    assert await client.is_org_member("org_1", USER) is True
    assert members.call_count == 2
    assert fake.sleeps == [1.5]


# --- The SDK's errors become ours -------------------------------------------------------------


async def test_auth0_404_for_an_unknown_user_is_our_not_found(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    body = {
        "statusCode": 404,
        "error": "Not Found",
        "message": "The user does not exist.",
        "errorCode": "inexistent_user",
    }
    mock.get(ROLES_PATH).respond(404, json=body)
    client = make_client(http, fake)

    with pytest.raises(NotFound) as caught:
        await client.get_user_roles(USER)
    assert "does not exist" not in caught.value.detail


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json=[{"id": "rol_1"}]),  # a bare list although totals were asked
        httpx.Response(200, json={"roles": "rol_1", "total": 1}),
        httpx.Response(200, text="<html>maintenance</html>"),
    ],
)
async def test_a_roles_answer_the_sdk_cannot_read_is_502(
    mock: respx.MockRouter,
    token_route: respx.Route,
    http: httpx.AsyncClient,
    fake: FakeTime,
    answer: httpx.Response,
) -> None:
    roles = mock.get(ROLES_PATH).mock(return_value=answer)
    client = make_client(http, fake)

    with pytest.raises(UpstreamError) as caught:
        await client.get_user_roles(USER)

    assert caught.value.status == 502
    assert "maintenance" not in caught.value.detail
    assert roles.call_count == 1  # not retried: asking again would get the same


async def test_a_member_list_that_never_ends_is_502(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    members = mock.get("/api/v2/organizations/org_1/members").respond(
        json={"members": [{"user_id": "auth0|x"}], "next": "same"}
    )
    client = make_client(http, fake)

    with pytest.raises(UpstreamError):
        await client.is_org_member("org_1", USER)
    assert members.call_count == 2


# --- Metrics ----------------------------------------------------------------------------------


async def test_calls_retries_and_token_fetches_are_counted(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    mock.get(USER_PATH).mock(side_effect=[httpx.Response(500), httpx.Response(200, json=PROFILE)])
    mock.post("/api/v2/jobs/verification-email").respond(503)
    client = make_client(http, fake)
    ok = {"operation": "users.get", "outcome": "ok"}
    failed = {"operation": "jobs.verification_email.create", "outcome": "unavailable"}
    before = {
        "ok": metric("auth0_calls_total", **ok),
        "failed": metric("auth0_calls_total", **failed),
        "retries": metric("auth0_retries_total", operation="users.get"),
        "token": metric("m2m_token_fetches_total", outcome="ok"),
        "grant": metric("auth0_calls_total", operation="oauth.token", outcome="ok"),
    }

    await client.get_user(USER)
    with pytest.raises(UpstreamUnavailable):
        await client.send_verification_email(USER)

    assert metric("auth0_calls_total", **ok) == before["ok"] + 1
    assert metric("auth0_calls_total", **failed) == before["failed"] + 1
    assert metric("auth0_retries_total", operation="users.get") == before["retries"] + 1
    assert metric("m2m_token_fetches_total", outcome="ok") == before["token"] + 1
    assert metric("auth0_calls_total", operation="oauth.token", outcome="ok") == (
        before["grant"] + 1
    )


async def test_a_refused_token_request_is_counted_failed(
    mock: respx.MockRouter, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    mock.post("/oauth/token").respond(401, json={"error": "access_denied"})
    client = make_client(http, fake)
    before = metric("m2m_token_fetches_total", outcome="failed")

    with pytest.raises(UpstreamError):
        await client.get_user(USER)

    assert metric("m2m_token_fetches_total", outcome="failed") == before + 1


async def test_breaker_state_is_a_gauge(
    mock: respx.MockRouter, token_route: respx.Route, http: httpx.AsyncClient, fake: FakeTime
) -> None:
    users = mock.get(USER_PATH).respond(500)
    client = make_client(
        http, fake, auth0_retry_budget_seconds=0, auth0_breaker_failures=1, profile_cache_seconds=0
    )

    with pytest.raises(UpstreamUnavailable):
        await client.get_user(USER)
    assert metric("auth0_breaker_open") == 1

    fake.advance(10)
    users.respond(json=PROFILE)
    await client.get_user(USER)
    assert metric("auth0_breaker_open") == 0
