"""The console for organisation admins: the organisation's members, one member's roles,
sign-ins and live sessions; granting and revoking allow-listed roles through the API's own
rules (POST with X-CSRF: 1); ending a member's session, whose cookie then gets 401."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import running_app
from tests.fixtures.standin import StandIn
from tests.helpers import assert_problem
from tests.session.support import login, session_settings, with_cookie

ORG = "org_acme"
ADMIN, CAROL = "auth0|admin", "auth0|carol"
CAROL_PAGE = "/console/members/auth0%7Ccarol"


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return session_settings(database, assignable_roles="rol_Nurse,rol_Doctor")


@pytest.fixture
async def app(settings: Settings, standin: StandIn) -> AsyncIterator[httpx.AsyncClient]:
    standin.state.org_members[ORG] = {ADMIN, CAROL}
    standin.state.member_roles[(ORG, CAROL)] = [
        {"id": "rol_Nurse", "name": "Nurse", "description": "ward"}
    ]
    standin.state.user_permissions["auth0|clinician"] = ["read:patients"]
    async with running_app(settings) as http:
        yield http


def page(cookie: str) -> dict[str, str]:
    return with_cookie(cookie, csrf=False)


async def _roles(standin: StandIn) -> list[str]:
    return [r["id"] for r in standin.state.member_roles.get((ORG, CAROL), [])]


async def test_the_members_page_lists_the_organisation_and_is_recorded(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "admin", organization=ORG)
    response = await app.get("/console/members", headers=page(cookie))
    assert response.status_code == 200
    assert f'href="{CAROL_PAGE}"' in response.text
    assert 'href="/console/members"' in response.text  # in the navigation
    row = await owner.fetchrow(
        "SELECT actor, scope FROM audit_events WHERE action = 'org.members.read'"
    )
    assert row["actor"] == ADMIN and row["scope"] == f"org:{ORG}"


async def test_without_an_organisation_or_permission_the_pages_are_403(
    app: httpx.AsyncClient,
) -> None:
    tenant_admin = await login(app, "admin")  # signed in without the organisation
    response = await app.get("/console/members", headers=page(tenant_admin))
    assert response.status_code == 403 and "sign in through your organisation" in response.text
    clinician = await login(app, "clinician", organization=ORG)
    for path in ("/console/members", CAROL_PAGE):
        response = await app.get(path, headers=page(clinician))
        assert response.status_code == 403 and "read:users" in response.text


async def test_a_member_shows_roles_sessions_and_sign_ins(app: httpx.AsyncClient) -> None:
    await login(app, "carol", organization=ORG)
    await login(app, "carol")  # outside the organisation: not shown to its admin
    cookie = await login(app, "admin", organization=ORG)
    response = await app.get(CAROL_PAGE, headers=page(cookie))
    assert response.status_code == 200
    assert "rol_Nurse" in response.text and 'data-role="rol_Nurse"' in response.text
    assert response.text.count("End this session") == 1
    assert response.text.count("<code>user.signed_in</code>") == 1


async def test_someone_outside_the_organisation_is_not_found(app: httpx.AsyncClient) -> None:
    cookie = await login(app, "admin", organization=ORG)
    for path in ("/console/members/auth0%7Cmallory", "/console/members/not-a-user"):
        response = await app.get(path, headers=page(cookie))
        assert response.status_code == 404, path
        assert "rol_" not in response.text


async def test_granting_and_revoking_follow_the_apis_rules(
    app: httpx.AsyncClient, standin: StandIn, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "admin", organization=ORG)
    grant, revoke = f"{CAROL_PAGE}/roles/grant", f"{CAROL_PAGE}/roles/revoke"
    granted = await app.post(grant, json={"roles": ["rol_Doctor"]}, headers=with_cookie(cookie))
    assert granted.status_code == 204, granted.text
    assert await _roles(standin) == ["rol_Nurse", "rol_Doctor"]
    revoked = await app.post(revoke, json={"roles": ["rol_Nurse"]}, headers=with_cookie(cookie))
    assert revoked.status_code == 204
    assert await _roles(standin) == ["rol_Doctor"]
    actions = await owner.fetch(
        "SELECT action, outcome FROM audit_events WHERE action LIKE 'user.roles.%'"
        " AND action <> 'user.roles.read' ORDER BY seq"
    )
    assert [(r["action"], r["outcome"]) for r in actions] == [
        ("user.roles.assigned", "success"),
        ("user.roles.removed", "success"),
    ]


@pytest.mark.parametrize(
    ("path", "body", "csrf", "status"),
    [
        (f"{CAROL_PAGE}/roles/grant", {"roles": ["rol_Admin"]}, True, 403),  # not allow-listed
        ("/console/members/auth0%7Cadmin/roles/grant", {"roles": ["rol_Doctor"]}, True, 403),
        (f"{CAROL_PAGE}/roles/grant", {"roles": ["rol_Doctor"]}, False, 403),  # no X-CSRF
        (f"{CAROL_PAGE}/roles/grant", {"roles": ["not a role"]}, True, 422),
        (f"{CAROL_PAGE}/roles/grant", {"roles": ["rol_Doctor"], "x": 1}, True, 422),
        ("/console/members/auth0%7Cmallory/roles/grant", {"roles": ["rol_Doctor"]}, True, 404),
    ],
)
async def test_a_refused_role_change_changes_nothing(
    app: httpx.AsyncClient,
    standin: StandIn,
    path: str,
    body: dict[str, object],
    csrf: bool,
    status: int,
) -> None:
    cookie = await login(app, "admin", organization=ORG)
    response = await app.post(path, json=body, headers=with_cookie(cookie, csrf=csrf))
    assert_problem(response, status)
    assert await _roles(standin) == ["rol_Nurse"]
    assert standin.state.member_roles.get((ORG, ADMIN), []) == []


async def test_ending_a_members_session_makes_its_cookie_401(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    carol = await login(app, "carol", organization=ORG)
    assert (await app.get("/api/me", headers=with_cookie(carol))).status_code == 200
    admin = await login(app, "admin", organization=ORG)
    session_id = await owner.fetchval("SELECT id FROM browser_sessions WHERE sub = $1", CAROL)
    end = f"{CAROL_PAGE}/sessions/{session_id}/end"
    refused = await app.post(end, headers=with_cookie(admin, csrf=False))
    assert_problem(refused, 403)
    assert (await app.get("/api/me", headers=with_cookie(carol))).status_code == 200
    ended = await app.post(end, headers=with_cookie(admin))
    assert ended.status_code == 204
    assert (await app.get("/api/me", headers=with_cookie(carol))).status_code == 401
    row = await owner.fetchrow(
        "SELECT actor, scope, detail->>'reason' AS reason FROM audit_events"
        " WHERE action = 'session.ended' AND entity_id = $1",
        str(session_id),
    )
    assert (row["actor"], row["scope"], row["reason"]) == (ADMIN, f"org:{ORG}", "ended_by_admin")
    again = await app.post(end, headers=with_cookie(admin))
    assert_problem(again, 404)


async def test_a_session_outside_the_organisation_cannot_be_ended(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    carol = await login(app, "carol")  # her own scope, not the organisation's
    admin = await login(app, "admin", organization=ORG)
    session_id = await owner.fetchval("SELECT id FROM browser_sessions WHERE sub = $1", CAROL)
    response = await app.post(f"{CAROL_PAGE}/sessions/{session_id}/end", headers=with_cookie(admin))
    assert_problem(response, 404)
    assert (await app.get("/api/me", headers=with_cookie(carol))).status_code == 200
