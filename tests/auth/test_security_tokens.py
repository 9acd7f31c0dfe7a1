"""Security findings at the token: permissions fail closed, token lifetimes are
bounded, and claims that do not fit the tables are refused before the database is asked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import respx

from app.core.settings import ConfigError, load_settings
from devkit.db import ProvisionedDatabase
from devkit.keys import TokenMinter
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem, bearer

DAY = 86_400


async def nothing_stored(owner: asyncpg.Connection) -> None:
    for table in ("registrations", "sign_in_sessions", "revocations", "audit_events"):
        assert await owner.fetchval(f"SELECT count(*) FROM {table}") == 0, table


def assert_refused(response: httpx.Response, description: str) -> None:
    assert_problem(response, 401, detail=description)
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge and f'"{description}"' in challenge


# --- 2. Permissions fail closed ------------------------------------------------------------


class TestPermissions:
    async def test_a_user_token_gets_nothing_from_scope(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        claims = minter.claims(scope="openid read:audit_events read:patients")
        del claims["permissions"]  # RBAC off on the tenant: any scope may be asked for
        token = minter.current.sign(claims)

        me = await client.get("/api/me", headers=bearer(token))
        audit = await client.get(
            "/api/audit-events/verify", headers=bearer(token), params={"since": "2026-01-01"}
        )

        assert me.json()["permissions"] == []
        assert_problem(audit, 403)
        assert 'error="insufficient_scope"' in audit.headers["www-authenticate"]

    async def test_an_empty_permissions_claim_is_not_widened_by_scope(
        self, client: httpx.AsyncClient, mint: Callable[..., str]
    ) -> None:
        token = mint(permissions=[], scope="openid read:patients")
        assert_problem(await client.get("/api/patients", headers=bearer(token)), 403)

    @pytest.mark.parametrize(
        "claim",
        ["read:patients", ["read:patients", 7], {"read:patients": True}, 1, True],
        ids=["string", "mixed list", "object", "number", "bool"],
    )
    async def test_a_permissions_claim_that_is_not_a_list_of_strings_is_401(
        self,
        client: httpx.AsyncClient,
        minter: TokenMinter,
        owner: asyncpg.Connection,
        claim: Any,
    ) -> None:
        claims = {**minter.claims(scope="openid read:patients"), "permissions": claim}
        response = await client.get("/api/me", headers=bearer(minter.current.sign(claims)))
        assert_refused(response, "invalid permissions claim")
        await nothing_stored(owner)

    async def test_a_client_credentials_token_gets_its_granted_scopes(
        self, client: httpx.AsyncClient, minter: TokenMinter
    ) -> None:
        claims = minter.claims(
            "m2m-client@clients", scope="read:patients", gty="client-credentials", sid=None
        )
        del claims["permissions"]
        response = await client.get("/api/patients", headers=bearer(minter.current.sign(claims)))
        assert response.status_code == 200, response.text


# --- 3. Token lifetimes are bounded --------------------------------------------------------


class TestLifetime:
    @pytest.mark.parametrize(
        "exp",
        [10**12, 1e23, int(time.time()) + 31 * DAY, 2**53, 1e308],
        ids=["year 33658", "1e23", "31 days", "2**53", "1e308"],
    )
    async def test_exp_beyond_the_longest_lifetime_is_401(
        self,
        client: httpx.AsyncClient,
        tenant: respx.MockRouter,
        mint: Callable[..., str],
        owner: asyncpg.Connection,
        exp: float,
    ) -> None:
        token = bearer(mint(exp=exp))
        profile = tenant.get(url__regex=r"/api/v2/users/.*").mock(
            return_value=httpx.Response(200, json={"user_id": "auth0|user-1"})
        )
        for response in (
            await client.post("/api/logout", headers=token),
            await client.get("/api/profile", headers=token),
            await client.get("/api/me", headers=token),
        ):
            assert_refused(response, "invalid exp claim")
        assert not profile.called
        await nothing_stored(owner)

    async def test_a_month_long_token_is_accepted_and_revocable(
        self, client: httpx.AsyncClient, mint: Callable[..., str]
    ) -> None:
        token = bearer(mint(exp=int(time.time()) + 29 * DAY))
        assert (await client.post("/api/logout", headers=token)).status_code == 204
        assert_refused(await client.get("/api/me", headers=token), "token revoked")

    async def test_the_limit_is_a_setting(
        self, database: ProvisionedDatabase, tenant: respx.MockRouter, mint: Callable[..., str]
    ) -> None:
        settings = make_settings(database, max_token_lifetime_seconds=3600)
        async with running_app(settings) as http:
            hour = await http.get("/api/me", headers=bearer(mint(exp=int(time.time()) + 3000)))
            day = await http.get("/api/me", headers=bearer(mint(exp=int(time.time()) + DAY)))
        assert hour.status_code == 200
        assert_refused(day, "invalid exp claim")

    @pytest.mark.parametrize("iat", [-1e300, -1, 2**60], ids=["-1e300", "-1", "2**60"])
    async def test_an_iat_no_tenant_writes_is_401(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        owner: asyncpg.Connection,
        iat: float,
    ) -> None:
        token = mint(iat=iat, sid=None, jti=None)  # the session is then named by its iat
        assert_refused(await client.get("/api/me", headers=bearer(token)), "invalid iat claim")
        await nothing_stored(owner)


class TestRevokedSessionSetting:
    VALID = {
        "database_url": "postgresql://app@db.internal:5432/bff",
        "auth0_domain": "tenant.eu.auth0.com",
        "auth0_audience": "https://api.example.com",
        "auth0_client_id": "cid",
        "auth0_client_secret": "super-secret-value",
        "app_secret_key": "0123456789abcdef0123456789abcdef-test",
        "_env_file": None,
    }

    def test_defaults_keep_a_revoked_session_for_the_longest_token(self) -> None:
        settings = load_settings(**self.VALID)
        assert settings.auth.max_token_lifetime_seconds == 30 * DAY
        assert settings.auth.revoked_session_seconds >= settings.auth.max_token_lifetime_seconds

    def test_revoked_sessions_forgotten_before_tokens_expire_stop_start_up(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings(**self.VALID, revoked_session_seconds=DAY)
        message = str(caught.value)
        assert "\n" not in message
        assert "REVOKED_SESSION_SECONDS" in message and "MAX_TOKEN_LIFETIME_SECONDS" in message
        assert "super-secret-value" not in message
        shorter = load_settings(
            **self.VALID, revoked_session_seconds=DAY, max_token_lifetime_seconds=DAY
        )
        assert shorter.auth.revoked_session_seconds == DAY

    def test_serve_says_so_in_one_line(self, tmp_path: Path) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AUTH0_", "DATABASE_URL", "MIGRATIONS_", "REVOKED_", "MAX_"))
        }
        env |= {
            "DATABASE_URL": "postgresql://app@127.0.0.1:1/bff",
            "AUTH0_DOMAIN": "tenant.example.com",
            "AUTH0_AUDIENCE": "https://api.example.com",
            "AUTH0_CLIENT_ID": "cid",
            "AUTH0_CLIENT_SECRET": "cli-secret-value",
            "APP_SECRET_KEY": "0123456789abcdef0123456789abcdef-test",
            "REVOKED_SESSION_SECONDS": "3600",
        }
        result = subprocess.run(
            [sys.executable, "-m", "app", "serve"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert result.stderr.strip() == (
            "error: configuration error: invalid setting(s): REVOKED_SESSION_SECONDS (3600) "
            "must be at least MAX_TOKEN_LIFETIME_SECONDS (2592000)"
        )


# --- 4. Claims that do not fit the tables --------------------------------------------------


class TestClaimsThatDoNotFit:
    @pytest.mark.parametrize(
        ("claims", "description"),
        [
            ({"sub": "auth0|" + "a" * 300, "email": "jane.doe@example.com"}, "invalid sub claim"),
            ({"sub": "auth0|jane\x00doe"}, "invalid sub claim"),
            ({"sid": "s" * 300}, "invalid sid claim"),
            ({"jti": "t" * 300, "sid": None}, "invalid jti claim"),
            ({"email": "j" * 330 + "@example.com"}, "invalid email claim"),
            ({"email": "jane\x00@example.com"}, "invalid email claim"),
            ({"amr": ["pwd\x00"]}, "invalid amr claim"),
        ],
        ids=[
            "306-char sub",
            "NUL in sub",
            "long sid",
            "long jti",
            "long email",
            "NUL in email",
            "NUL in amr",
        ],
    )
    async def test_sign_up_and_sign_in_are_401_and_store_nothing(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        owner: asyncpg.Connection,
        claims: dict[str, Any],
        description: str,
    ) -> None:
        token = bearer(mint(**claims))
        assert_refused(await client.post("/api/registrations", headers=token), description)
        assert_refused(await client.get("/api/me", headers=token), description)
        await nothing_stored(owner)

    async def test_the_longest_user_id_signs_up_and_asks_for_a_verification_email(
        self,
        client: httpx.AsyncClient,
        tenant: respx.MockRouter,
        mint: Callable[..., str],
        owner: asyncpg.Connection,
    ) -> None:
        sub = "auth0|" + "a" * 249  # 255 characters, the column's limit
        job = tenant.post("/api/v2/jobs/verification-email").mock(
            return_value=httpx.Response(
                201, json={"id": "job_1", "status": "pending", "type": "verification_email"}
            )
        )
        token = bearer(mint(sub=sub, email="jane.doe@example.com"))
        registered = await client.post("/api/registrations", headers=token)
        verification = await client.post("/api/account/verification-email", headers=token)
        assert registered.status_code == 201
        assert verification.status_code == 202, verification.text
        assert job.called
        assert await owner.fetchval("SELECT auth0_user_id FROM registrations") == sub
