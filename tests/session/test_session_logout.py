"""GET /auth/session (who is signed in, never a token) and POST /auth/logout."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx

from app.session.cookies import SESSION_COOKIE
from app.session.crypto import TokenBox
from tests.fixtures.standin import SESSION_CLIENT_ID, StandIn
from tests.fixtures.tenant import TENANT_URL
from tests.helpers import assert_problem, audit_rows
from tests.session.support import (
    ENCRYPTION_KEY,
    PUBLIC_URL,
    cleared,
    login,
    session_rows,
    set_cookies,
    with_cookie,
)


class TestSession:
    async def test_anonymous(self, app: httpx.AsyncClient) -> None:
        response = await app.get("/auth/session", headers={"X-CSRF": "1"})
        assert_problem(response, 401)
        assert SESSION_COOKIE not in set_cookies(response)

    async def test_ok(self, app: httpx.AsyncClient, owner: asyncpg.Connection) -> None:
        cookie = await login(app, "alice")
        response = await app.get("/auth/session", headers=with_cookie(cookie))
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["user"] == {
            "sub": "auth0|alice",
            "name": "alice",
            "email": "alice@example.com",
            "picture": "https://example.com/avatar.png",
            "email_verified": True,
        }
        [row] = await session_rows(owner)
        assert body["idle_expires_at"] == row["idle_expires_at"].isoformat()
        assert body["absolute_expires_at"] == row["absolute_expires_at"].isoformat()
        box = TokenBox(ENCRYPTION_KEY)
        for column in ("access_token", "refresh_token", "id_token"):
            assert box.open(row[column]) not in response.text

    async def test_missing_csrf_is_403(self, app: httpx.AsyncClient) -> None:
        cookie = await login(app)
        response = await app.get("/auth/session", headers=with_cookie(cookie, csrf=False))
        assert_problem(response, 403)

    async def test_unknown_cookie_is_401_and_cleared(self, app: httpx.AsyncClient) -> None:
        response = await app.get("/auth/session", headers=with_cookie("Z" * 43))
        assert_problem(response, 401)
        assert cleared(response)


class TestLogout:
    async def test_ok(
        self, app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
    ) -> None:
        cookie = await login(app, "alice")
        [row] = await session_rows(owner)
        id_token = TokenBox(ENCRYPTION_KEY).open(row["id_token"])

        response = await app.post("/auth/logout", headers=with_cookie(cookie))
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert cleared(response)
        url = urlsplit(response.json()["logout_url"])
        assert f"{url.scheme}://{url.netloc}{url.path}" == f"{TENANT_URL}/oidc/logout"
        assert parse_qs(url.query) == {
            "id_token_hint": [id_token],
            "post_logout_redirect_uri": [f"{PUBLIC_URL}/"],
            "client_id": [SESSION_CLIENT_ID],
        }
        assert await session_rows(owner) == []
        assert standin.state.counts["revoke"] == 1
        assert standin.state.logins.revoked_families  # the refresh token is dead at the tenant
        [event] = await audit_rows(owner, "user.signed_out")
        assert event["actor"] == "auth0|alice"
        # The cookie is dead everywhere: the API and the session answer 401.
        after = await app.get("/api/patients", headers=with_cookie(cookie))
        assert_problem(after, 401)
        assert cleared(after)

    async def test_tenant_down_does_not_keep_the_session(
        self, app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
    ) -> None:
        cookie = await login(app)
        standin.router.routes["standin"].side_effect = httpx.ConnectError("down")
        response = await app.post("/auth/logout", headers=with_cookie(cookie))
        assert response.status_code == 200
        assert cleared(response)
        assert await session_rows(owner) == []

    async def test_missing_csrf_is_403_and_the_session_stays(
        self, app: httpx.AsyncClient, owner: asyncpg.Connection
    ) -> None:
        cookie = await login(app)
        response = await app.post("/auth/logout", headers=with_cookie(cookie, csrf=False))
        assert_problem(response, 403)
        assert len(await session_rows(owner)) == 1

    async def test_anonymous(self, app: httpx.AsyncClient) -> None:
        assert_problem(await app.post("/auth/logout", headers={"X-CSRF": "1"}), 401)


async def test_without_a_cookie_a_missing_csrf_header_is_still_401(app: httpx.AsyncClient) -> None:
    # Not cookie-authenticated, so not a CSRF question: the page learns it must sign in.
    assert_problem(await app.get("/auth/session"), 401)
