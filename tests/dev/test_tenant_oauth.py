"""The stand-in tenant's browser login: the sign-in form at /authorize and the code
exchange with PKCE, in Auth0's shapes (devkit/tenant/oauth.py, devkit/tenant/grants.py)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from jose import jwt

from devkit.keys import ALL_PERMISSIONS, TokenMinter
from devkit.tenant.state import TenantState
from tests.dev import tenant_login
from tests.dev.tenant_login import (
    AUDIENCE,
    CALLBACK,
    CLIENT,
    SCOPE,
    authorize_query,
    exchange,
    id_claims,
    login,
    pkce,
    query_of,
    tokens,
)
from tests.fixtures.standin import SESSION_CLIENT_ID, SESSION_CLIENT_SECRET, sign_in

# The stand-in tenant with the session client, behind an in-process client (tenant_login.py).
state = tenant_login.state
tenant = tenant_login.tenant


class TestAuthorize:
    async def test_form_carries_the_request_back(self, tenant: httpx.AsyncClient) -> None:
        _, challenge = pkce()
        page = await tenant.get("/authorize", params=authorize_query(challenge))
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<h1>Log in</h1>" in page.text
        assert '<input id="username" name="username"' in page.text
        assert page.text.count("<button") == 1
        assert f'name="code_challenge" value="{challenge}"' in page.text
        assert 'name="nonce" value="nonce-1"' in page.text
        assert 'method="post" action="/authorize"' in page.text
        assert "<script" not in page.text

    async def test_its_policy_allows_its_own_style_and_no_script(
        self, tenant: httpx.AsyncClient
    ) -> None:
        _, challenge = pkce()
        page = await tenant.get("/authorize", params=authorize_query(challenge))
        csp = dict(
            part.strip().split(" ", 1)
            for part in page.headers["content-security-policy"].split(";")
        )
        assert csp["default-src"] == "'none'"
        assert csp["style-src"].startswith("'sha256-")
        assert "script-src" not in csp
        assert csp["form-action"] == "'self' https://app.test"
        assert csp["frame-ancestors"] == "'none'"
        assert page.headers["cache-control"] == "no-store"

    async def test_signup_hint_shows_sign_up(self, tenant: httpx.AsyncClient) -> None:
        _, challenge = pkce()
        query = authorize_query(challenge, screen_hint="signup")
        page = await tenant.get("/authorize", params=query)
        assert "<h1>Sign up</h1>" in page.text
        assert 'name="screen_hint" value="signup"' in page.text

    async def test_values_are_escaped(self, tenant: httpx.AsyncClient) -> None:
        _, challenge = pkce()
        query = authorize_query(challenge, state='"><script>alert(1)</script>')
        page = await tenant.get("/authorize", params=query)
        assert page.status_code == 200
        assert "<script>" not in page.text
        assert 'value="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in page.text

    @pytest.mark.parametrize(
        ("override", "error"),
        [
            ({"client_id": "someone-else"}, "unauthorized_client"),
            ({"redirect_uri": "javascript:alert(1)"}, "Callback URL mismatch"),
            ({"redirect_uri": "https://app.test/x;script-src *"}, "Callback URL mismatch"),
            ({"redirect_uri": "https://app.test/cb#fragment"}, "Callback URL mismatch"),
            ({"redirect_uri": None}, "Callback URL mismatch"),
            ({"response_type": "token"}, "unsupported_response_type"),
            ({"code_challenge": None}, "PKCE is required"),
            ({"code_challenge_method": "plain"}, "PKCE is required"),
            ({"code_challenge_method": None}, "PKCE is required"),
            ({"code_challenge": "too-short"}, "PKCE is required"),
            ({"connection": "bad connection"}, "Invalid connection"),
        ],
    )
    @pytest.mark.parametrize("method", ["GET", "POST"])
    async def test_a_bad_request_is_a_400_page_without_redirect(
        self,
        tenant: httpx.AsyncClient,
        state: TenantState,
        override: dict[str, str | None],
        error: str,
        method: str,
    ) -> None:
        _, challenge = pkce()
        query = authorize_query(challenge, **override)
        if method == "GET":
            answer = await tenant.get("/authorize", params=query)
        else:
            answer = await tenant.post("/authorize", data={**query, "username": "alice"})
        assert answer.status_code == 400
        assert answer.headers["content-type"].startswith("text/html")
        assert "location" not in answer.headers
        assert error in answer.text
        assert state.logins.codes == {} and state.logins.sessions == {}
        assert state.users == {}

    async def test_a_callback_outside_the_allow_list_is_refused(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        state.allowed_callbacks = ["https://app.test/other"]
        _, challenge = pkce()
        answer = await tenant.get("/authorize", params=authorize_query(challenge))
        assert answer.status_code == 400
        assert "Callback URL mismatch" in answer.text
        state.allowed_callbacks.append(CALLBACK)
        assert (
            await tenant.get("/authorize", params=authorize_query(challenge))
        ).status_code == 200

    async def test_sign_in_redirects_with_a_code_and_the_state(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        _, challenge = pkce()
        callback = await sign_in(
            tenant, f"/authorize?{urlencode(authorize_query(challenge))}", "alice"
        )
        assert callback.startswith(f"{CALLBACK}?")
        query = query_of(callback)
        assert set(query) == {"code", "state"} and query["state"] == "state-1"
        assert query["code"] in state.logins.codes
        assert state.users["auth0|alice"]["email"] == "alice@example.com"
        [session] = state.logins.sessions.values()
        assert session.sub == "auth0|alice"
        assert state.counts["authorize"] == 1 and state.counts["sign_in"] == 1

    async def test_a_connection_names_the_user_after_its_provider(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        await login(tenant, "bob", connection="google-oauth2")
        user = state.users["google-oauth2|bob"]
        assert user["identities"][0]["provider"] == "google-oauth2"
        assert user["identities"][0]["isSocial"] is True

    async def test_deny_redirects_with_access_denied(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        _, challenge = pkce()
        callback = await sign_in(
            tenant, f"/authorize?{urlencode(authorize_query(challenge))}", "deny"
        )
        query = query_of(callback)
        assert query["error"] == "access_denied"
        assert query["state"] == "state-1"
        assert "code" not in query and query["error_description"]
        assert state.logins.codes == {} and state.users == {}

    @pytest.mark.parametrize("username", ["", "has space", "<b>", "x" * 65])
    async def test_a_bad_user_name_shows_the_form_again(
        self, tenant: httpx.AsyncClient, state: TenantState, username: str
    ) -> None:
        _, challenge = pkce()
        answer = await tenant.post(
            "/authorize", data={**authorize_query(challenge), "username": username}
        )
        assert answer.status_code == 400
        assert 'role="alert"' in answer.text and 'name="username"' in answer.text
        assert state.logins.codes == {} and state.users == {}


class TestCodeGrant:
    async def test_the_code_gives_tokens_for_the_login(
        self, tenant: httpx.AsyncClient, state: TenantState, minter: TokenMinter
    ) -> None:
        code, verifier = await login(tenant)
        answer = await exchange(tenant, code, verifier)
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "no-store"
        body = answer.json()
        assert set(body) == {
            "access_token",
            "id_token",
            "refresh_token",
            "token_type",
            "expires_in",
            "scope",
        }
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 86400
        assert body["scope"] == SCOPE
        [sid] = state.logins.sessions
        claims = id_claims(minter, body["id_token"])
        assert claims["sub"] == "auth0|alice"
        assert claims["aud"] == SESSION_CLIENT_ID
        assert claims["nonce"] == "nonce-1"
        assert claims["sid"] == sid
        assert claims["name"] == "alice" and claims["email"] == "alice@example.com"
        assert claims["email_verified"] is True and claims["picture"]
        assert claims["auth_time"] <= claims["iat"]
        access = jwt.decode(
            body["access_token"], minter.jwks(), algorithms=["RS256"], audience=AUDIENCE
        )
        assert access["sub"] == "auth0|alice"
        assert access["iss"] == claims["iss"] == minter.issuer
        assert access["permissions"] == list(ALL_PERMISSIONS)
        assert access["azp"] == SESSION_CLIENT_ID
        assert access["exp"] - access["iat"] == 86400
        assert "sid" not in access and "nonce" not in access
        assert state.counts["code_grant"] == 1

    async def test_http_basic_client_authentication_works(self, tenant: httpx.AsyncClient) -> None:
        code, verifier = await login(tenant)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
        }
        answer = await tenant.post(
            "/oauth/token", data=form, auth=(SESSION_CLIENT_ID, SESSION_CLIENT_SECRET)
        )
        assert answer.status_code == 200 and answer.json()["access_token"]

    async def test_without_offline_access_there_is_no_refresh_token(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        code, verifier = await login(tenant, scope="openid profile email")
        body = (await exchange(tenant, code, verifier)).json()
        assert "refresh_token" not in body and body["id_token"]
        assert state.logins.refresh_tokens == {}

    async def test_the_user_permissions_and_ttl_are_the_tenants(
        self, tenant: httpx.AsyncClient, state: TenantState, minter: TokenMinter
    ) -> None:
        state.user_permissions["auth0|carol"] = ["read:patients"]
        state.session_access_token_ttl_seconds = 5
        body = await tokens(tenant, "carol")
        access = jwt.decode(
            body["access_token"], minter.jwks(), algorithms=["RS256"], audience=AUDIENCE
        )
        assert access["permissions"] == ["read:patients"]
        assert body["expires_in"] == 5 and access["exp"] - access["iat"] == 5

    @pytest.mark.parametrize(
        ("override", "description"),
        [
            ({"code_verifier": "not-the-verifier"}, "Failed to verify code verifier"),
            ({"code_verifier": ""}, "Failed to verify code verifier"),
            ({"redirect_uri": "https://app.test/elsewhere"}, "Invalid redirect URI"),
            ({"code": "never-issued"}, "Invalid authorization code"),
        ],
    )
    async def test_a_bad_exchange_is_invalid_grant(
        self,
        tenant: httpx.AsyncClient,
        state: TenantState,
        override: dict[str, str],
        description: str,
    ) -> None:
        code, verifier = await login(tenant)
        answer = await exchange(tenant, code, verifier, **override)
        assert answer.status_code == 403
        assert answer.json() == {"error": "invalid_grant", "error_description": description}
        assert state.logins.refresh_tokens == {}

    async def test_a_code_is_single_use(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        code, verifier = await login(tenant)
        assert (await exchange(tenant, code, verifier)).status_code == 200
        again = await exchange(tenant, code, verifier)
        assert again.status_code == 403
        assert again.json()["error_description"] == "Invalid authorization code"
        assert len(state.logins.refresh_tokens) == 1

    async def test_an_expired_code_is_refused(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        code, verifier = await login(tenant)
        state.logins.codes[code].expires_at = time.time() - 1
        answer = await exchange(tenant, code, verifier)
        assert answer.status_code == 403
        assert answer.json()["error"] == "invalid_grant"
        assert state.logins.refresh_tokens == {}

    @pytest.mark.parametrize(
        "client",
        [
            {"client_id": SESSION_CLIENT_ID, "client_secret": "wrong"},
            {"client_id": "m2m-client", "client_secret": "m2m-secret"},
            {"client_id": SESSION_CLIENT_ID},
        ],
    )
    async def test_a_bad_client_is_401_and_the_code_survives(
        self, tenant: httpx.AsyncClient, state: TenantState, client: dict[str, str]
    ) -> None:
        code, verifier = await login(tenant)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
            **client,
        }
        answer = await tenant.post("/oauth/token", data=form)
        assert answer.status_code == 401
        assert answer.json()["error"] == "invalid_client"
        assert code in state.logins.codes
        assert (await exchange(tenant, code, verifier)).status_code == 200

    @pytest.mark.parametrize("missing", ["code", "redirect_uri"])
    async def test_a_missing_parameter_is_invalid_request(
        self, tenant: httpx.AsyncClient, missing: str
    ) -> None:
        code, verifier = await login(tenant)
        answer = await exchange(tenant, code, verifier, **{missing: ""})
        assert answer.status_code == 400
        assert answer.json() == {
            "error": "invalid_request",
            "error_description": f"Missing required parameter: {missing}",
        }

    async def test_other_grants_keep_their_old_answers(
        self, tenant: httpx.AsyncClient, state: TenantState
    ) -> None:
        password = await tenant.post("/oauth/token", data={"grant_type": "password", **CLIENT})
        assert password.status_code == 400
        assert password.json() == {"error": "unsupported_grant_type"}
        m2m = await tenant.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": state.client_id,
                "client_secret": state.client_secret,
            },
        )
        assert m2m.status_code == 200 and m2m.json()["access_token"] in state.m2m_tokens


async def test_discovery_names_the_login_endpoints(tenant: httpx.AsyncClient) -> None:
    document = (await tenant.get("/.well-known/openid-configuration")).json()
    assert document["authorization_endpoint"] == "http://tenant/authorize"
    assert document["token_endpoint"] == "http://tenant/oauth/token"
    assert document["revocation_endpoint"] == "http://tenant/oauth/revoke"
    assert document["end_session_endpoint"] == "http://tenant/oidc/logout"
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["backchannel_logout_supported"] is True
    assert document["backchannel_logout_session_supported"] is True
    assert document["response_types_supported"] == ["code"]


async def test_the_standin_fixture_serves_the_whole_tenant(standin: Any) -> None:
    """What the session tests rely on: `sign_in` through respx, then the code exchange."""
    verifier, challenge = pkce()
    async with httpx.AsyncClient() as http:
        document = (await http.get("https://tenant.stub/.well-known/openid-configuration")).json()
        authorize = f"{document['authorization_endpoint']}?{urlencode(authorize_query(challenge))}"
        callback = await sign_in(http, authorize, "alice")
        form = {
            "grant_type": "authorization_code",
            "code": query_of(callback)["code"],
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
            **CLIENT,
        }
        answer = await http.post(document["token_endpoint"], data=form)
    assert answer.status_code == 200
    assert standin.state.counts["code_grant"] == 1
