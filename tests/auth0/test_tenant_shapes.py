"""The stand-in tenant (devkit/tenant/app.py) answers the Management API in Auth0's shapes, and
our client (through auth0-python) reads every page of them.

The tenant runs in-process behind `httpx.ASGITransport`; time is fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from devkit.keys import TokenMinter
from devkit.tenant.app import create_tenant_app
from devkit.tenant.state import TenantState
from tests.auth0.support import BASE, USER, USER_PATH, FakeTime, make_client

ORG = "org_1"


@pytest.fixture
def state() -> TenantState:
    return TenantState(
        minter=TokenMinter("tenant.example.com", "https://api.example.com"),
        client_id="cid",
        client_secret="secret",
    )


@pytest.fixture
async def standin(state: TenantState) -> AsyncIterator[httpx.AsyncClient]:
    """The shared HTTP client, wired to the stand-in tenant."""
    transport = httpx.ASGITransport(app=create_tenant_app(state))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        yield http


@pytest.fixture
async def m2m(standin: httpx.AsyncClient) -> dict[str, str]:
    """A Management API bearer header, from the tenant's own client-credentials grant."""
    grant = {"grant_type": "client_credentials", "client_id": "cid", "client_secret": "secret"}
    token = (await standin.post("/oauth/token", json=grant)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def roles(count: int) -> list[dict[str, str]]:
    return [{"id": f"rol_{i:03}", "name": f"role {i}", "description": ""} for i in range(count)]


# --- Shapes ---------------------------------------------------------------------------------


async def test_user_roles_are_a_bare_list_unless_totals_are_asked_for(
    state: TenantState, standin: httpx.AsyncClient, m2m: dict[str, str]
) -> None:
    state.roles[USER] = roles(3)

    bare = await standin.get(USER_PATH + "/roles", params={"per_page": 2}, headers=m2m)
    paged = await standin.get(
        USER_PATH + "/roles",
        params={"per_page": 2, "page": 1, "include_totals": "true"},
        headers=m2m,
    )

    assert bare.json() == roles(2)
    assert paged.json() == {"roles": roles(3)[2:], "start": 2, "limit": 2, "total": 3}


@pytest.mark.parametrize(
    ("params", "field"), [({"per_page": "abc"}, "per_page"), ({"page": "-1"}, "page")]
)
async def test_a_bad_paging_parameter_is_auth0s_400(
    state: TenantState,
    standin: httpx.AsyncClient,
    m2m: dict[str, str],
    params: dict[str, str],
    field: str,
) -> None:
    response = await standin.get(USER_PATH + "/roles", params=params, headers=m2m)

    assert response.status_code == 400
    body = response.json()
    assert (body["statusCode"], body["error"], body["errorCode"]) == (
        400,
        "Bad Request",
        "invalid_query_string",
    )
    assert field in body["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"take": "0"}, "take"), ({"take": "2", "from": "not a checkpoint"}, "from")],
)
async def test_a_bad_checkpoint_parameter_is_auth0s_400(
    state: TenantState,
    standin: httpx.AsyncClient,
    m2m: dict[str, str],
    params: dict[str, str],
    field: str,
) -> None:
    state.org_members[ORG] = {"auth0|a"}

    response = await standin.get(f"/api/v2/organizations/{ORG}/members", params=params, headers=m2m)

    assert response.status_code == 400
    assert response.json()["errorCode"] == "invalid_query_string"
    assert field in response.json()["message"]


async def test_org_members_by_offset_and_by_checkpoint(
    state: TenantState, standin: httpx.AsyncClient, m2m: dict[str, str]
) -> None:
    state.org_members[ORG] = {"auth0|a", "auth0|b", "auth0|c"}
    path = f"/api/v2/organizations/{ORG}/members"

    offset = await standin.get(path, params={"include_totals": "true", "per_page": 2}, headers=m2m)
    first = await standin.get(path, params={"take": 2}, headers=m2m)
    cursor = first.json()["next"]
    last = await standin.get(path, params={"take": 2, "from": cursor}, headers=m2m)

    assert offset.json() == {
        "members": [{"user_id": "auth0|a"}, {"user_id": "auth0|b"}],
        "start": 0,
        "limit": 2,
        "total": 3,
    }
    assert first.json()["members"] == [{"user_id": "auth0|a"}, {"user_id": "auth0|b"}]
    assert last.json() == {"members": [{"user_id": "auth0|c"}]}  # no `next`: the end


async def test_an_unknown_organization_is_auth0s_404(
    standin: httpx.AsyncClient, m2m: dict[str, str]
) -> None:
    response = await standin.get("/api/v2/organizations/org_none/members", headers=m2m)

    assert response.status_code == 404
    assert response.json() == {
        "statusCode": 404,
        "error": "Not Found",
        "message": "No organization found by that id or name",
        "errorCode": "inexistent_organization",
    }


# --- Our paging over them -------------------------------------------------------------------


async def test_a_user_with_more_roles_than_one_page_gets_them_all(
    state: TenantState, standin: httpx.AsyncClient, fake: FakeTime
) -> None:
    state.roles[USER] = roles(250)
    client = make_client(standin, fake)

    got = await client.get_user_roles(USER)

    assert got == roles(250)
    assert state.counts["get_roles"] == 3  # 100 + 100 + 50, and no empty page after


async def test_member_roles_across_pages_after_assigning_them(
    state: TenantState, standin: httpx.AsyncClient, fake: FakeTime
) -> None:
    state.org_members[ORG] = {USER}
    client = make_client(standin, fake)
    await client.assign_member_roles(ORG, USER, [f"rol_{i:03}" for i in range(120)])

    got = await client.get_member_roles(ORG, USER)

    assert [r["id"] for r in got] == [f"rol_{i:03}" for i in range(120)]
    assert state.counts["get_member_roles"] == 2


async def test_membership_is_found_on_a_later_checkpoint_page(
    state: TenantState, standin: httpx.AsyncClient, fake: FakeTime
) -> None:
    state.org_members[ORG] = {f"auth0|m{i:03}" for i in range(250)} | {"auth0|zzz"}
    client = make_client(standin, fake)

    assert await client.is_org_member(ORG, "auth0|zzz") is True
    assert state.counts["org_members"] == 3
    assert await client.is_org_member(ORG, "auth0|nobody") is False
    assert await client.is_org_member("org_none", "auth0|zzz") is False
