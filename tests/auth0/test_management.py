"""The Auth0 calls (app/auth0/management.py): paths, bodies and pagination, and all of them
against the stand-in tenant.

Auth0 is stubbed at the transport with `respx`; each test asserts the requests it captured.
Time is fake: `sleep` records what the client asked for and moves both clocks on.
"""

from __future__ import annotations

import httpx
import pytest
import respx

from devkit.keys import TokenMinter
from devkit.tenant.app import create_tenant_app
from devkit.tenant.state import TenantState
from tests.auth0.support import PROFILE, USER, USER_PATH, FakeTime, make_client, raw_path, sent_json

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
    roles = mock.get(url__regex=r"/api/v2/users/.+/roles").respond(
        json={"roles": [], "start": 0, "limit": 100, "total": 0}
    )
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
