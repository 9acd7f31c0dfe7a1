"""Every /api route takes the session cookie instead of a bearer token: the same verification,
permissions and audit, with CSRF checks; a cookie that names no live session is a 401 that
clears it."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import httpx
import pytest

from app.session.cookies import SESSION_COOKIE
from tests.fixtures.standin import SESSION_CLIENT_ID
from tests.helpers import assert_problem, bearer
from tests.session.support import cleared, login, session_rows, set_cookies, with_cookie

PATIENT = {"given_name": "Ada", "family_name": "Lovelace", "birth_date": "1990-12-10"}


async def test_the_cookie_reads_and_writes_patients_and_is_audited_like_bearer(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    created = await app.post("/api/patients", json=PATIENT, headers=with_cookie(cookie))
    assert created.status_code == 201, created.text
    listed = await app.get("/api/patients", headers=with_cookie(cookie))
    assert listed.status_code == 200
    assert [p["id"] for p in listed.json()["items"]] == [created.json()["id"]]

    rows = await owner.fetch(
        "SELECT action, actor, scope, session_id, client_id FROM audit_events"
        " WHERE action LIKE 'patient.%' ORDER BY seq"
    )
    assert [r["action"] for r in rows] == ["patient.created", "patient.searched"]
    for row in rows:
        assert row["actor"] == "auth0|alice"
        assert row["scope"] == "user:auth0|alice"
        assert row["client_id"] == SESSION_CLIENT_ID  # the access token's azp


async def test_without_x_csrf_is_403_and_nothing_is_stored(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app)
    response = await app.post(
        "/api/patients", json=PATIENT, headers=with_cookie(cookie, csrf=False)
    )
    assert_problem(
        response, 403, detail="a request with the session cookie must send the header X-CSRF: 1"
    )
    assert await owner.fetchval("SELECT count(*) FROM patients") == 0
    wrong = await app.get("/api/patients", headers={**with_cookie(cookie), "X-CSRF": "yes"})
    assert_problem(wrong, 403)


async def test_a_cross_site_request_is_403(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app)
    response = await app.post(
        "/api/patients",
        json=PATIENT,
        headers=with_cookie(cookie, **{"Sec-Fetch-Site": "cross-site"}),
    )
    assert_problem(response, 403, detail="cross-site requests may not use the session cookie")
    assert await owner.fetchval("SELECT count(*) FROM patients") == 0
    same_site = await app.get(
        "/api/patients", headers=with_cookie(cookie, **{"Sec-Fetch-Site": "same-origin"})
    )
    assert same_site.status_code == 200


async def test_bearer_requests_are_unaffected(
    app: httpx.AsyncClient, mint: Callable[..., str]
) -> None:
    token = mint(sub="auth0|bob")
    # No X-CSRF needed; a stray cookie beside the bearer token is ignored.
    headers = {**bearer(token), "Cookie": f"{SESSION_COOKIE}=garbage"}
    response = await app.get("/api/patients", headers=headers)
    assert response.status_code == 200
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    "value",
    ["tampered", "A" * 43, "x" * 500],
    ids=["malformed", "unknown", "oversized"],
)
async def test_a_tampered_or_unknown_cookie_is_401_and_cleared(
    app: httpx.AsyncClient, value: str
) -> None:
    response = await app.get("/api/patients", headers=with_cookie(value))
    assert_problem(response, 401)
    assert cleared(response)
    assert response.headers["www-authenticate"].startswith(
        'Bearer realm="api", error="invalid_token"'
    )


async def test_a_changed_character_makes_a_valid_cookie_unknown(app: httpx.AsyncClient) -> None:
    cookie = await login(app)
    tampered = ("B" if cookie[0] != "B" else "C") + cookie[1:]
    response = await app.get("/api/patients", headers=with_cookie(tampered))
    assert_problem(response, 401, detail="the session is unknown or has ended")
    assert cleared(response)
    assert (await app.get("/api/patients", headers=with_cookie(cookie))).status_code == 200


@pytest.mark.parametrize(
    ("column", "reason"),
    [("idle_expires_at", "idle_timeout"), ("absolute_expires_at", "absolute_timeout")],
)
async def test_an_expired_session_is_401_cleared_ended_and_recorded(
    app: httpx.AsyncClient, owner: asyncpg.Connection, column: str, reason: str
) -> None:
    cookie = await login(app)
    await owner.execute(
        "UPDATE browser_sessions SET idle_expires_at = now() - interval '1 second'"
        + (
            ", absolute_expires_at = now() - interval '1 second'"
            if column == "absolute_expires_at"
            else ""
        )
    )
    response = await app.get("/api/patients", headers=with_cookie(cookie))
    assert_problem(response, 401, detail="the session has expired")
    assert cleared(response)
    assert await session_rows(owner) == []
    [ended] = await owner.fetch(
        "SELECT actor, detail->>'reason' AS reason FROM audit_events WHERE action = 'session.ended'"
    )
    assert (ended["actor"], ended["reason"]) == ("auth0|alice", reason)


async def test_no_cookie_and_no_token_is_the_usual_401(app: httpx.AsyncClient) -> None:
    response = await app.get("/api/patients")
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    assert SESSION_COOKIE not in set_cookies(response)


async def test_a_revoked_access_token_ends_the_session(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app)
    # Signing out through the bearer API revokes the token's Auth0 session (sid)...
    signed_out = await app.post("/api/logout", headers=with_cookie(cookie))
    assert signed_out.status_code == 204
    # ...so the cookie's next request is refused, and the session is gone with its cookie.
    response = await app.get("/api/patients", headers=with_cookie(cookie))
    assert_problem(response, 401, detail="token revoked")
    assert cleared(response)
    assert await session_rows(owner) == []
