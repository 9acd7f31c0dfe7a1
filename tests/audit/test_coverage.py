"""Every route that touches patient data or a profile writes its audit event.

The route table is walked: each `/api/...` route is either a case below, driven through the
app and required to append at least one audit event, or listed in EXEMPT with the reason.
A new route that is neither fails `test_every_api_route_is_accounted_for`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import respx

from app.core.settings import Settings
from app.main import all_routes
from devkit.db import ProvisionedDatabase
from tests.fixtures.settings import make_settings
from tests.helpers import bearer

USER = "auth0|auditor"
USER_RE = r"^/api/v2/users/auth0(%7C|\|)(auditor|target)(/roles)?$"
NEW_PATIENT = {"given_name": "Ada", "family_name": "Lovelace", "birth_date": "1990-12-10"}

# Routes that touch neither patient data nor a profile; why each is left out.
EXEMPT = {
    ("POST", "/api/account/verification-email"): "asks Auth0 to send an email; no data read",
    ("GET", "/api/audit-events/verify"): "recomputes hashes; returns counts and ids only",
    # Hashes and tree sizes only; each records its `audit.read` all the same, checked where a
    # signed checkpoint exists (tests/audit/test_endpoints_proofs.py).
    ("GET", "/api/audit-events/checkpoint"): "a signed tree head: a size and a hash",
    ("GET", "/api/audit-events/{event_id}/inclusion"): "an RFC 9162 proof: hashes only",
    ("GET", "/api/audit-events/consistency"): "an RFC 9162 proof: hashes only",
    # Records `audit.cosigned` when accepted (tests/audit/test_witness.py); needs a witness.
    ("POST", "/api/audit-events/checkpoint/cosignatures"): "a witness's signature of a hash",
    ("GET", "/api/me/logins"): "the caller's own sign-in history: no patient, no other user",
}

Call = Callable[[httpx.AsyncClient, dict[str, str], str], Awaitable[httpx.Response]]


def _cases() -> dict[tuple[str, str], Call]:
    window = "since=2026-01-01T00:00:00Z&until=2026-01-31T00:00:00Z"
    return {
        ("POST", "/api/registrations"): lambda c, h, p: c.post("/api/registrations", headers=h),
        ("GET", "/api/me"): lambda c, h, p: c.get("/api/me", headers=h),
        ("PATCH", "/api/profile"): lambda c, h, p: c.patch(
            "/api/profile", json={"nickname": "n"}, headers=h
        ),
        ("GET", "/api/profile"): lambda c, h, p: c.get("/api/profile", headers=h),
        ("POST", "/api/patients"): lambda c, h, p: c.post(
            "/api/patients", json={**NEW_PATIENT, "given_name": "Grace"}, headers=h
        ),
        ("GET", "/api/patients"): lambda c, h, p: c.get("/api/patients", headers=h),
        ("GET", "/api/patients/{patient_id}"): lambda c, h, p: c.get(
            f"/api/patients/{p}", headers=h
        ),
        ("PATCH", "/api/patients/{patient_id}"): lambda c, h, p: c.patch(
            f"/api/patients/{p}", json={"family_name": "Byron"}, headers={**h, "If-Match": 'W/"1"'}
        ),
        ("DELETE", "/api/patients/{patient_id}"): lambda c, h, p: c.delete(
            f"/api/patients/{p}", headers=h
        ),
        ("GET", "/api/patients/{patient_id}/access-report"): lambda c, h, p: c.get(
            f"/api/patients/{p}/access-report", headers=h
        ),
        ("GET", "/api/audit-events"): lambda c, h, p: c.get(
            f"/api/audit-events?{window}", headers=h
        ),
        ("GET", "/api/audit-events/export"): lambda c, h, p: c.get(
            f"/api/audit-events/export?format=ndjson&{window}", headers=h
        ),
        ("GET", "/api/audit-events/digests"): lambda c, h, p: c.get(
            "/api/audit-events/digests", headers=h
        ),
        ("POST", "/api/logout"): lambda c, h, p: c.post("/api/logout", headers=h),
        ("POST", "/api/account/password-reset"): lambda c, h, p: c.post(
            "/api/account/password-reset", json={"email": "someone@example.com"}
        ),
        ("GET", "/api/admin/users/{user_id}/roles"): lambda c, h, p: c.get(
            "/api/admin/users/auth0|target/roles", headers=h
        ),
        ("POST", "/api/admin/users/{user_id}/roles"): lambda c, h, p: c.post(
            "/api/admin/users/auth0|target/roles", json={"roles": ["rol_1"]}, headers=h
        ),
        ("DELETE", "/api/admin/users/{user_id}/roles"): lambda c, h, p: c.request(
            "DELETE", "/api/admin/users/auth0|target/roles", json={"roles": ["rol_1"]}, headers=h
        ),
    }


CASES = _cases()


def api_routes() -> set[tuple[str, str]]:
    routes = set()
    for route in all_routes():
        path = getattr(route, "path_format", "")
        if path.startswith("/api/"):
            for method in getattr(route, "methods", set()) - {"HEAD"}:
                routes.add((method, path))
    return routes


def test_every_api_route_is_accounted_for() -> None:
    assert api_routes() == set(CASES) | set(EXEMPT)


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    """The role the cases assign is assignable (ASSIGNABLE_ROLES is empty by default)."""
    return make_settings(database, assignable_roles="rol_1")


@pytest.mark.parametrize("route", sorted(CASES), ids=lambda r: f"{r[0]} {r[1]}")
async def test_route_writes_an_audit_event(
    route: tuple[str, str],
    client: httpx.AsyncClient,
    mint: Callable[..., str],
    tenant: respx.MockRouter,
    owner: asyncpg.Connection,
) -> None:
    user: dict[str, Any] = {"user_id": USER, "email": "a@example.com", "email_verified": True}
    no_roles = {"roles": [], "start": 0, "limit": 100, "total": 0}
    tenant.route(path__regex=USER_RE).mock(
        side_effect=lambda request: (
            httpx.Response(200, json=no_roles if request.url.path.endswith("/roles") else user)
            if request.method in {"GET", "PATCH"}
            else httpx.Response(204)
        )
    )
    tenant.post("/dbconnections/change_password").mock(return_value=httpx.Response(200))
    headers = bearer(mint(USER, email_verified=True))
    created = await client.post("/api/patients", json=NEW_PATIENT, headers=headers)
    assert created.status_code == 201
    patient_id = created.json()["id"]
    before = await owner.fetchval("SELECT count(*) FROM audit_events")

    response = await CASES[route](client, headers, patient_id)
    assert response.status_code < 300, response.text

    # A password reset is recorded after its response (so timing reveals nothing): wait.
    deadline = asyncio.get_running_loop().time() + 3
    after = before
    while after == before and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        after = await owner.fetchval("SELECT count(*) FROM audit_events")
    assert after > before, f"{route[0]} {route[1]} wrote no audit event"
