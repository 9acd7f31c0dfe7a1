"""Admin: a user's Auth0 roles, with permissions, org boundaries and the audit trail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import orjson
import pytest
import respx

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import account_app
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem, audit_rows, bearer

USER = "auth0|target-1"
ROLES_URL = f"/api/admin/users/{quote(USER, safe='')}/roles"
MGMT_ROLES = f"/api/v2/users/{quote(USER, safe='')}/roles"
MEMBER_ROLES = f"/api/v2/organizations/org_1/members/{quote(USER, safe='')}/roles"
ADMIN = "auth0|admin-1"
ROLE_LIST = [{"id": "rol_A1", "name": "clinician", "description": "Sees patients"}]


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    """The roles these tests change are assignable (ASSIGNABLE_ROLES is empty by default)."""
    return make_settings(database, assignable_roles="rol_A1,rol_B2")


def role_calls(tenant: respx.MockRouter) -> list[httpx.Request]:
    return [c.request for c in tenant.calls if c.request.url.path.endswith("/roles")]


def stub_roles(tenant: respx.MockRouter) -> None:
    page = {"roles": ROLE_LIST, "start": 0, "limit": 100, "total": len(ROLE_LIST)}
    tenant.get(MGMT_ROLES).mock(return_value=httpx.Response(200, json=page))
    tenant.post(MGMT_ROLES).mock(return_value=httpx.Response(201))
    tenant.delete(MGMT_ROLES).mock(return_value=httpx.Response(204))


def stub_members(tenant: respx.MockRouter, org: str, members: list[str]) -> respx.Route:
    return tenant.get(f"/api/v2/organizations/{org}/members").mock(
        return_value=httpx.Response(200, json={"members": [{"user_id": m} for m in members]})
    )


class TestGetRoles:
    async def test_anonymous(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        stub_roles(tenant)
        async with account_app(settings) as running:
            response = await running.http.get(ROLES_URL)
        assert_problem(response, 401)
        assert not role_calls(tenant)
        assert await audit_rows(owner) == []

    async def test_missing_permission(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_roles(tenant)
        async with account_app(settings) as running:
            response = await running.http.get(
                ROLES_URL, headers=bearer(mint(sub=ADMIN, permissions=["update:users"]))
            )
        assert_problem(response, 403)
        assert 'scope="read:users"' in response.headers["www-authenticate"]
        assert not role_calls(tenant)
        [row] = await audit_rows(owner)
        assert (row["action"], row["outcome"], row["actor"], row["entity_id"]) == (
            "user.roles.read",
            "denied",
            ADMIN,
            USER,
        )

    async def test_ok(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_roles(tenant)
        async with account_app(settings) as running:
            response = await running.http.get(
                ROLES_URL, headers=bearer(mint(sub=ADMIN, permissions=["read:users"]))
            )
        assert response.status_code == 200
        assert response.json() == {"user_id": USER, "roles": ROLE_LIST}
        [row] = await audit_rows(owner)
        assert (row["action"], row["outcome"], row["actor"], row["entity_type"]) == (
            "user.roles.read",
            "success",
            ADMIN,
            "user",
        )

    async def test_not_an_auth0_user_id(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        async with account_app(settings) as running:
            response = await running.http.get(
                "/api/admin/users/no-provider/roles", headers=bearer(mint(sub=ADMIN))
            )
        problem = assert_problem(response, 422)
        assert problem["errors"][0]["field"] == "user_id"
        assert not role_calls(tenant)
        assert await audit_rows(owner) == []


class TestChangeRoles:
    async def test_anonymous(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        stub_roles(tenant)
        async with account_app(settings) as running:
            response = await running.http.post(ROLES_URL, json={"roles": ["rol_A1"]})
        assert_problem(response, 401)
        assert not role_calls(tenant)
        assert await audit_rows(owner) == []

    @pytest.mark.parametrize(("method", "action"), [("POST", "assigned"), ("DELETE", "removed")])
    async def test_non_admin_is_403_and_audited_as_denied(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
        method: str,
        action: str,
    ) -> None:
        stub_roles(tenant)
        token = mint(sub="auth0|plain-user", permissions=["read:patients", "read:users"])
        async with account_app(settings) as running:
            response = await running.http.request(
                method, ROLES_URL, headers=bearer(token), json={"roles": ["rol_A1"]}
            )
        problem = assert_problem(response, 403)
        assert problem["type"].endswith("/insufficient-scope")
        assert 'scope="update:users"' in response.headers["www-authenticate"]
        assert not role_calls(tenant)
        [row] = await audit_rows(owner)
        assert (row["action"], row["outcome"], row["actor"], row["entity_id"]) == (
            f"user.roles.{action}",
            "denied",
            "auth0|plain-user",
            USER,
        )
        assert "update:users" in row["outcome_reason"]

    async def test_assign(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_roles(tenant)
        async with account_app(settings) as running:
            response = await running.http.post(
                ROLES_URL,
                headers=bearer(mint(sub=ADMIN, permissions=["update:users"])),
                json={"roles": ["rol_A1", "rol_B2", "rol_A1"]},
            )
        assert response.status_code == 204
        [call] = role_calls(tenant)
        assert (call.method, call.url.raw_path.decode()) == ("POST", MGMT_ROLES)
        assert orjson.loads(call.content) == {"roles": ["rol_A1", "rol_B2"]}
        [row] = await audit_rows(owner)
        assert (row["action"], row["outcome"], row["actor"], row["entity_id"]) == (
            "user.roles.assigned",
            "success",
            ADMIN,
            USER,
        )
        assert orjson.loads(row["detail"]) == {"roles": ["rol_A1", "rol_B2"]}

    async def test_remove(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_roles(tenant)
        async with account_app(settings) as running:
            response = await running.http.request(
                "DELETE",
                ROLES_URL,
                headers=bearer(mint(sub=ADMIN, permissions=["update:users"])),
                json={"roles": ["rol_A1"]},
            )
        assert response.status_code == 204
        [call] = role_calls(tenant)
        assert call.method == "DELETE"
        assert orjson.loads(call.content) == {"roles": ["rol_A1"]}
        assert [r["action"] for r in await audit_rows(owner)] == ["user.roles.removed"]

    @pytest.mark.parametrize(
        ("body", "status", "field"),
        [
            ({"roles": []}, 422, "roles"),
            ({"roles": ["admin"]}, 422, "roles.0"),
            ({"roles": ["rol_A1"], "force": True}, 422, "force"),
            ({}, 422, "roles"),
            ({"roles": "rol_A1"}, 400, "roles"),
            ({"roles": [f"rol_{i}" for i in range(51)]}, 422, "roles"),
        ],
    )
    async def test_bad_body_stores_nothing(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
        body: dict[str, Any],
        status: int,
        field: str,
    ) -> None:
        stub_roles(tenant)
        async with account_app(settings) as running:
            response = await running.http.post(
                ROLES_URL, headers=bearer(mint(sub=ADMIN)), json=body
            )
        problem = assert_problem(response, status)
        assert field in [e["field"] for e in problem["errors"]]
        assert not role_calls(tenant)
        assert await audit_rows(owner) == []

    async def test_auth0_unavailable_is_503_and_recorded_failed(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        tenant.post(MGMT_ROLES).mock(return_value=httpx.Response(503))
        async with account_app(settings) as running:
            response = await running.http.post(
                ROLES_URL, headers=bearer(mint(sub=ADMIN)), json={"roles": ["rol_A1"]}
            )
        assert_problem(response, 503)
        [row] = await audit_rows(owner)
        assert (row["action"], row["outcome"]) == ("user.roles.assigned", "failed")


class TestOrgAdmin:
    async def test_cannot_touch_a_user_outside_the_org(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_roles(tenant)
        members = stub_members(tenant, "org_1", ["auth0|someone-else"])
        token = bearer(mint(sub=ADMIN, org_id="org_1"))
        async with account_app(settings) as running:
            read = await running.http.get(ROLES_URL, headers=token)
            change = await running.http.post(ROLES_URL, headers=token, json={"roles": ["rol_A1"]})
        for response in (read, change):
            problem = assert_problem(response, 404)
            assert problem["detail"] == "no such user in your organization"
        assert members.call_count == 2
        assert not role_calls(tenant)
        rows = await audit_rows(owner)
        assert [(r["action"], r["outcome"], r["entity_id"], r["scope"]) for r in rows] == [
            ("user.roles.read", "denied", USER, "org:org_1"),
            ("user.roles.assigned", "denied", USER, "org:org_1"),
        ]

    async def test_can_manage_a_member(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_roles(tenant)
        tenant.post(MEMBER_ROLES).mock(return_value=httpx.Response(204))
        stub_members(tenant, "org_1", [USER])
        async with account_app(settings) as running:
            response = await running.http.post(
                ROLES_URL,
                headers=bearer(mint(sub=ADMIN, org_id="org_1")),
                json={"roles": ["rol_A1"]},
            )
        assert response.status_code == 204
        assert [(c.method, c.url.raw_path.decode()) for c in role_calls(tenant)] == [
            ("POST", MEMBER_ROLES)
        ]
        [row] = await audit_rows(owner)
        assert (row["outcome"], row["scope"]) == ("success", "org:org_1")

    async def test_membership_check_unavailable_is_503(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_roles(tenant)
        tenant.get("/api/v2/organizations/org_1/members").mock(return_value=httpx.Response(503))
        async with account_app(settings) as running:
            response = await running.http.post(
                ROLES_URL,
                headers=bearer(mint(sub=ADMIN, org_id="org_1")),
                json={"roles": ["rol_A1"]},
            )
        assert_problem(response, 503)
        assert not role_calls(tenant)
        [row] = await audit_rows(owner)
        assert row["outcome"] == "failed"


class TestOpenAPI:
    async def test_permissions_are_documented(
        self, settings: Settings, tenant: respx.MockRouter
    ) -> None:
        async with account_app(settings) as running:
            spec = (await running.http.get("/openapi.json")).json()
        path = spec["paths"]["/api/admin/users/{user_id}/roles"]
        assert path["get"]["x-permissions"] == ["read:users"]
        assert path["post"]["x-permissions"] == ["update:users"]
        assert path["delete"]["x-permissions"] == ["update:users"]
        assert {"204", "401", "403", "404", "422", "503"} <= path["post"]["responses"].keys()
        account = spec["paths"]["/api/account/password-reset"]["post"]
        assert {"202", "422", "429"} <= account["responses"].keys()
        assert "security" not in account
