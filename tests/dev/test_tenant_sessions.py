"""The stand-in tenant's sessions after sign-in: refresh-token rotation and reuse,
revocation, logout and back-channel logout, in Auth0's shapes (devkit/tenant/grants.py,
devkit/tenant/oauth.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from jose import jwt

from devkit.keys import BACKCHANNEL_LOGOUT_EVENT, TokenMinter
from devkit.tenant.state import TenantState
from tests.dev import tenant_login
from tests.dev.tenant_login import (
    AUDIENCE,
    CLIENT,
    INVALID_REFRESH,
    RECEIVER,
    id_claims,
    refresh,
    tokens,
)
from tests.fixtures.standin import SESSION_CLIENT_ID

# The stand-in tenant with the session client, behind an in-process client (tenant_login.py).
state = tenant_login.state
tenant = tenant_login.tenant


class TestRefreshGrant:
    async def test_each_refresh_rotates_the_refresh_token(
        self, tenant: httpx.AsyncClient, state: TenantState, minter: TokenMinter
    ) -> None:
        first = await tokens(tenant)
        second = await refresh(tenant, first["refresh_token"])
        assert second.status_code == 200
        body = second.json()
        assert body["refresh_token"] != first["refresh_token"]
        claims = id_claims(minter, body["id_token"])
        assert "nonce" not in claims
        assert claims["sid"] == id_claims(minter, first["id_token"])["sid"]
        third = await refresh(tenant, body["refresh_token"])
        assert third.status_code == 200
        assert state.counts["refresh_grant"] == 2

    async def test_a_reused_refresh_token_revokes_the_family(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        first = await tokens(tenant)
        newer = (await refresh(tenant, first["refresh_token"])).json()["refresh_token"]
        reused = await refresh(tenant, first["refresh_token"])
        assert reused.status_code == 403
        assert reused.json() == INVALID_REFRESH
        after = await refresh(tenant, newer)
        assert after.status_code == 403 and after.json() == INVALID_REFRESH
        assert state.counts["refresh_reuse"] == 1

    async def test_a_reuse_leaves_other_logins_alone(self, tenant: httpx.AsyncClient) -> None:
        mine, theirs = await tokens(tenant), await tokens(tenant, "bob")
        await refresh(tenant, mine["refresh_token"])
        assert (await refresh(tenant, mine["refresh_token"])).status_code == 403
        assert (await refresh(tenant, theirs["refresh_token"])).status_code == 200

    async def test_an_unknown_refresh_token_is_invalid_grant(
        self, tenant: httpx.AsyncClient
    ) -> None:
        answer = await refresh(tenant, "never-issued")
        assert answer.status_code == 403 and answer.json() == INVALID_REFRESH

    async def test_a_bad_client_is_401_and_the_token_survives(
        self, tenant: httpx.AsyncClient
    ) -> None:
        first = await tokens(tenant)
        answer = await refresh(tenant, first["refresh_token"], client_secret="wrong")
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
        assert (await refresh(tenant, first["refresh_token"])).status_code == 200


class TestRevoke:
    async def test_revoking_ends_the_family(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        first = await tokens(tenant)
        newer = (await refresh(tenant, first["refresh_token"])).json()["refresh_token"]
        answer = await tenant.post("/oauth/revoke", data={"token": newer, **CLIENT})
        assert answer.status_code == 200 and answer.content == b""
        assert (await refresh(tenant, newer)).status_code == 403
        assert state.counts["revoke"] == 1

    async def test_json_bodies_are_accepted(self, tenant: httpx.AsyncClient) -> None:
        first = await tokens(tenant)
        answer = await tenant.post(
            "/oauth/revoke", json={"token": first["refresh_token"], **CLIENT}
        )
        assert answer.status_code == 200
        assert (await refresh(tenant, first["refresh_token"])).status_code == 403

    async def test_an_unknown_token_is_200(self, tenant: httpx.AsyncClient) -> None:
        answer = await tenant.post("/oauth/revoke", data={"token": "never-issued", **CLIENT})
        assert answer.status_code == 200

    async def test_a_bad_client_is_401_and_revokes_nothing(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        first = await tokens(tenant)
        answer = await tenant.post(
            "/oauth/revoke",
            data={"token": first["refresh_token"], "client_id": SESSION_CLIENT_ID},
        )
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
        assert state.logins.revoked_families == set()
        assert (await refresh(tenant, first["refresh_token"])).status_code == 200

    async def test_a_missing_token_is_400(self, tenant: httpx.AsyncClient) -> None:
        answer = await tenant.post("/oauth/revoke", data=CLIENT)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"


class TestLogout:
    async def test_logout_ends_the_session_and_redirects(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        body = await tokens(tenant)
        state.allowed_logout_urls = ["https://app.test/"]
        answer = await tenant.get(
            "/oidc/logout",
            params={
                "id_token_hint": body["id_token"],
                "post_logout_redirect_uri": "https://app.test/",
                "state": "s-2",
            },
        )
        assert answer.status_code == 302
        assert answer.headers["location"] == "https://app.test/?state=s-2"
        assert state.logins.sessions == {}
        # As in Auth0, a logout alone leaves the refresh tokens.
        assert (await refresh(tenant, body["refresh_token"])).status_code == 200
        assert state.counts["logout"] == 1

    @pytest.mark.parametrize("target", ["https://evil.test/", "javascript:alert(1)", None])
    async def test_an_unlisted_target_shows_signed_out(
        self, tenant: httpx.AsyncClient, state: TenantState, target: str | None
    ) -> None:
        body = await tokens(tenant)
        state.allowed_logout_urls = ["https://app.test/"]
        params = {"id_token_hint": body["id_token"]}
        if target is not None:
            params["post_logout_redirect_uri"] = target
        answer = await tenant.get("/oidc/logout", params=params)
        assert answer.status_code == 200 and "location" not in answer.headers
        assert "You are signed out" in answer.text
        assert state.logins.sessions == {}

    async def test_a_forged_hint_is_400_and_ends_nothing(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        await tokens(tenant)
        forged = TokenMinter(state.minter.domain, AUDIENCE).id_token(
            "auth0|alice", client_id=SESSION_CLIENT_ID, sid=next(iter(state.logins.sessions))
        )
        answer = await tenant.get(
            "/oidc/logout",
            params={"id_token_hint": forged, "post_logout_redirect_uri": "https://app.test/"},
        )
        assert answer.status_code == 400 and "location" not in answer.headers
        assert len(state.logins.sessions) == 1


class TestBackchannelLogout:
    async def test_it_posts_a_logout_token_and_ends_the_session(
        self, tenant: httpx.AsyncClient, state: TenantState, minter: TokenMinter
    ) -> None:
        body = await tokens(tenant)
        [sid] = state.logins.sessions
        with respx.mock(assert_all_mocked=True) as receiver:
            route = receiver.post(RECEIVER).mock(return_value=httpx.Response(200))
            answer = await tenant.post(
                "/dev/backchannel-logout", json={"sid": sid, "url": RECEIVER}
            )
        assert answer.status_code == 200
        assert answer.json() == {"delivered_to": RECEIVER, "status": 200}
        sent = route.calls.last.request
        assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
        form = parse_qs(sent.content.decode())
        [token] = form["logout_token"]
        assert jwt.get_unverified_header(token)["typ"] == "logout+jwt"
        claims = jwt.decode(
            token,
            minter.jwks(),
            algorithms=["RS256"],
            audience=SESSION_CLIENT_ID,
            issuer=minter.issuer,
        )
        assert claims["events"] == {BACKCHANNEL_LOGOUT_EVENT: {}}
        assert claims["sid"] == sid and claims["sub"] == "auth0|alice"
        assert "nonce" not in claims and claims["jti"]
        assert claims["exp"] - claims["iat"] == 120
        assert state.logins.sessions == {}
        assert (await refresh(tenant, body["refresh_token"])).status_code == 403
        assert state.counts["backchannel"] == 1

    async def test_it_uses_the_configured_url_and_reports_the_receivers_status(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        await tokens(tenant)
        state.backchannel_logout_url = RECEIVER
        with respx.mock(assert_all_mocked=True) as receiver:
            receiver.post(RECEIVER).mock(return_value=httpx.Response(400))
            answer = await tenant.post("/dev/backchannel-logout", json={"sub": "auth0|alice"})
        assert answer.json() == {"delivered_to": RECEIVER, "status": 400}
        assert state.logins.sessions == {}

    @pytest.mark.parametrize(
        "body",
        [{}, {"url": RECEIVER}, {"sid": "s"}, ["sid"], {"sid": 5, "url": RECEIVER}],
    )
    async def test_without_a_sid_or_a_url_nothing_is_sent(
        self, tenant: httpx.AsyncClient, state: TenantState, body: Any
    ) -> None:
        await tokens(tenant)
        with respx.mock(assert_all_mocked=True, assert_all_called=False) as receiver:
            route = receiver.post(RECEIVER).mock(return_value=httpx.Response(200))
            answer = await tenant.post("/dev/backchannel-logout", json=body)
        assert answer.status_code == 400
        assert not route.called
        assert len(state.logins.sessions) == 1

    async def test_an_unreachable_receiver_is_502(self, tenant: httpx.AsyncClient) -> None:
        with respx.mock(assert_all_mocked=True) as receiver:
            receiver.post(RECEIVER).mock(side_effect=httpx.ConnectError("refused"))
            answer = await tenant.post(
                "/dev/backchannel-logout", json={"sid": "s", "url": RECEIVER}
            )
        assert answer.status_code == 502
        assert answer.json() == {"delivered_to": RECEIVER, "error": "ConnectError"}
