"""An organization admin manages roles inside its organization only,
only ASSIGNABLE_ROLES change hands, nobody changes their own roles, and every attempt is
audited with the role ids. Also the stand-in tenant's organization member-role endpoints."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import asyncpg
import httpx
import orjson
import pytest
import respx

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from devkit.keys import TokenMinter
from devkit.tenant.app import create_tenant_app
from devkit.tenant.state import TenantState
from tests.fixtures.app import account_app
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem, audit_rows, bearer

ADMIN = "auth0|admin-1"
USER = "auth0|target-1"
ORG = "org_1"
ASSIGNABLE = "rol_Clinician1"
SUPER = "rol_TenantSuperAdmin"
ROLES_URL = f"/api/admin/users/{quote(USER, safe='')}/roles"
OWN_ROLES_URL = f"/api/admin/users/{quote(ADMIN, safe='')}/roles"
TENANT_ROLES = f"/api/v2/users/{quote(USER, safe='')}/roles"
MEMBER_ROLES = f"/api/v2/organizations/{ORG}/members/{quote(USER, safe='')}/roles"
ROLE_LIST = [{"id": ASSIGNABLE, "name": "clinician", "description": "Sees patients"}]


@pytest.fixture
def admin_settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(database, assignable_roles=ASSIGNABLE)


def stub_tenant_roles(tenant: respx.MockRouter) -> None:
    page = {"roles": ROLE_LIST, "start": 0, "limit": 100, "total": len(ROLE_LIST)}
    tenant.get(TENANT_ROLES).mock(return_value=httpx.Response(200, json=page))
    tenant.post(TENANT_ROLES).mock(return_value=httpx.Response(201))
    tenant.delete(TENANT_ROLES).mock(return_value=httpx.Response(204))


def stub_member_roles(tenant: respx.MockRouter) -> None:
    page = {"roles": ROLE_LIST, "start": 0, "limit": 100, "total": len(ROLE_LIST)}
    tenant.get(MEMBER_ROLES).mock(return_value=httpx.Response(200, json=page))
    tenant.post(MEMBER_ROLES).mock(return_value=httpx.Response(204))
    tenant.delete(MEMBER_ROLES).mock(return_value=httpx.Response(204))


def stub_members(tenant: respx.MockRouter, members: list[str]) -> None:
    tenant.get(f"/api/v2/organizations/{ORG}/members").mock(
        return_value=httpx.Response(200, json={"members": [{"user_id": m} for m in members]})
    )


def role_calls(tenant: respx.MockRouter) -> list[httpx.Request]:
    return [c.request for c in tenant.calls if c.request.url.path.endswith("/roles")]


class TestOrganizationAdmin:
    @pytest.mark.parametrize("method", ["POST", "DELETE"])
    async def test_changes_member_roles_of_its_organization_not_tenant_roles(
        self,
        admin_settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
        method: str,
    ) -> None:
        stub_tenant_roles(tenant)
        stub_member_roles(tenant)
        stub_members(tenant, [USER])
        token = mint(sub=ADMIN, org_id=ORG, permissions=["update:users"])
        async with account_app(admin_settings) as running:
            response = await running.http.request(
                method, ROLES_URL, headers=bearer(token), json={"roles": [ASSIGNABLE]}
            )
        assert response.status_code == 204
        [call] = role_calls(tenant)
        assert (call.method, call.url.raw_path.decode()) == (method, MEMBER_ROLES)
        assert orjson.loads(call.content) == {"roles": [ASSIGNABLE]}
        [row] = await audit_rows(owner)
        assert (row["outcome"], row["scope"], row["entity_id"]) == ("success", f"org:{ORG}", USER)
        assert orjson.loads(row["detail"]) == {"roles": [ASSIGNABLE]}

    async def test_reads_member_roles_of_its_organization(
        self,
        admin_settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_tenant_roles(tenant)
        stub_member_roles(tenant)
        stub_members(tenant, [USER])
        token = mint(sub=ADMIN, org_id=ORG, permissions=["read:users"])
        async with account_app(admin_settings) as running:
            response = await running.http.get(ROLES_URL, headers=bearer(token))
        assert response.status_code == 200
        assert response.json() == {"user_id": USER, "roles": ROLE_LIST}
        [call] = role_calls(tenant)
        assert call.url.path == f"/api/v2/organizations/{ORG}/members/{USER}/roles"
        assert [r["action"] for r in await audit_rows(owner)] == ["user.roles.read"]


class TestRefusedChanges:
    async def test_own_roles_are_403_and_audited_with_the_role_ids(
        self,
        admin_settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_member_roles(tenant)
        stub_members(tenant, [ADMIN])
        token = mint(sub=ADMIN, org_id=ORG, permissions=["update:users"])
        async with account_app(admin_settings) as running:
            response = await running.http.post(
                OWN_ROLES_URL, headers=bearer(token), json={"roles": [ASSIGNABLE]}
            )
        assert_problem(response, 403, detail="you cannot change your own roles")
        assert not role_calls(tenant)
        [row] = await audit_rows(owner)
        assert (row["action"], row["outcome"], row["actor"], row["entity_id"]) == (
            "user.roles.assigned",
            "denied",
            ADMIN,
            ADMIN,
        )
        assert orjson.loads(row["detail"]) == {"roles": [ASSIGNABLE]}

    @pytest.mark.parametrize("org_id", [ORG, None], ids=["org admin", "tenant admin"])
    @pytest.mark.parametrize(("method", "action"), [("POST", "assigned"), ("DELETE", "removed")])
    async def test_a_role_outside_assignable_roles_is_403_naming_it(
        self,
        admin_settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
        org_id: str | None,
        method: str,
        action: str,
    ) -> None:
        stub_tenant_roles(tenant)
        stub_member_roles(tenant)
        stub_members(tenant, [USER])
        token = mint(sub=ADMIN, org_id=org_id, permissions=["update:users"])
        async with account_app(admin_settings) as running:
            response = await running.http.request(
                method, ROLES_URL, headers=bearer(token), json={"roles": [ASSIGNABLE, SUPER]}
            )
        problem = assert_problem(response, 403)
        assert SUPER in problem["detail"] and ASSIGNABLE not in problem["detail"]
        assert not role_calls(tenant)
        [row] = await audit_rows(owner)
        assert (row["action"], row["outcome"], row["entity_id"]) == (
            f"user.roles.{action}",
            "denied",
            USER,
        )
        assert orjson.loads(row["detail"]) == {"roles": [ASSIGNABLE, SUPER]}

    async def test_no_assignable_roles_by_default(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_tenant_roles(tenant)
        assert settings.account.assignable_roles == []
        token = mint(sub=ADMIN, permissions=["update:users"])
        async with account_app(settings) as running:
            response = await running.http.post(
                ROLES_URL, headers=bearer(token), json={"roles": [ASSIGNABLE]}
            )
        assert_problem(response, 403)
        assert not role_calls(tenant)
        assert [r["outcome"] for r in await audit_rows(owner)] == ["denied"]

    async def test_missing_permission_is_audited_with_the_role_ids(
        self,
        admin_settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_tenant_roles(tenant)
        token = mint(sub="auth0|plain-user", permissions=["read:users"])
        async with account_app(admin_settings) as running:
            response = await running.http.post(
                ROLES_URL, headers=bearer(token), json={"roles": [SUPER]}
            )
        assert_problem(response, 403)
        assert not role_calls(tenant)
        [row] = await audit_rows(owner)
        assert (row["action"], row["outcome"]) == ("user.roles.assigned", "denied")
        assert orjson.loads(row["detail"]) == {"roles": [SUPER]}

    async def test_tenant_admin_assigns_an_assignable_role_tenant_wide(
        self,
        admin_settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        mint: Callable[..., str],
    ) -> None:
        stub_tenant_roles(tenant)
        token = mint(sub=ADMIN, permissions=["update:users"])
        async with account_app(admin_settings) as running:
            response = await running.http.post(
                ROLES_URL, headers=bearer(token), json={"roles": [ASSIGNABLE]}
            )
        assert response.status_code == 204
        [call] = role_calls(tenant)
        assert (call.method, call.url.raw_path.decode()) == ("POST", TENANT_ROLES)
        [row] = await audit_rows(owner)
        assert (row["outcome"], orjson.loads(row["detail"])) == ("success", {"roles": [ASSIGNABLE]})


class TestSettings:
    def test_assignable_roles_are_role_ids(self, database: ProvisionedDatabase) -> None:
        settings = make_settings(database, assignable_roles=f"{ASSIGNABLE}, rol_B2,{ASSIGNABLE}")
        assert settings.account.assignable_roles == [ASSIGNABLE, "rol_B2"]
        with pytest.raises(ValueError, match="ASSIGNABLE_ROLES"):
            make_settings(database, assignable_roles="admin")


class TestStandInTenant:
    """The stand-in serves a member's roles within an organization, in Auth0's shapes."""

    @pytest.fixture
    async def stand_in(self) -> httpx.AsyncClient:
        state = TenantState(TokenMinter("dev.local", "https://api"), "cid", "secret")
        state.org_members[ORG] = {USER}
        state.m2m_tokens.add("m2m")
        transport = httpx.ASGITransport(app=create_tenant_app(state))
        return httpx.AsyncClient(
            transport=transport, base_url="http://tenant", headers={"Authorization": "Bearer m2m"}
        )

    async def test_member_roles_round_trip(self, stand_in: httpx.AsyncClient) -> None:
        async with stand_in as http:
            assigned = await http.post(MEMBER_ROLES, json={"roles": [ASSIGNABLE, "rol_B2"]})
            page = await http.get(MEMBER_ROLES, params={"include_totals": "true", "per_page": 1})
            removed = await http.request("DELETE", MEMBER_ROLES, json={"roles": ["rol_B2"]})
            listed = await http.get(MEMBER_ROLES)
            tenant_wide = await http.get(TENANT_ROLES)
        assert (assigned.status_code, removed.status_code) == (204, 204)
        assert page.json() == {
            "roles": [{"id": ASSIGNABLE, "name": ASSIGNABLE, "description": ""}],
            "start": 0,
            "limit": 1,
            "total": 2,
        }
        assert [r["id"] for r in listed.json()] == [ASSIGNABLE]
        assert tenant_wide.json() == []  # organization roles are not tenant roles

    async def test_a_user_outside_the_organization_is_404(
        self, stand_in: httpx.AsyncClient
    ) -> None:
        outsider = f"/api/v2/organizations/{ORG}/members/{quote('auth0|x', safe='')}/roles"
        async with stand_in as http:
            response = await http.post(outsider, json={"roles": [ASSIGNABLE]})
        assert response.status_code == 404
        assert response.json()["statusCode"] == 404
