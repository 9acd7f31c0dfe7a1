"""The keys of the audit digests come from configuration only (migrations/0011, app/audit/
endpoints/digests.py): `GET /.well-known/audit-keys` serves AUDIT_SIGNING_KEY's and
AUDIT_RETIRED_KEYS' keys and never one read from the database; a public key enters the
database only through the migrations owner (`python -m app audit register-key`), never
through the application role; and the issuer never continues a digest signed by a key
that is not configured."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import respx
from databases import Database

from app.audit.digests import DigestRefused, issue_digest
from app.audit.runtime import DigestIssuer
from app.audit.signing import Digest, KeyRing
from app.core.db import asyncpg_dsn, discover_migrations, migrate
from app.core.settings import ConfigError, load_settings
from devkit.db import ProvisionedDatabase, with_credentials
from devkit.keys import new_audit_signing_key
from tests.audit.tamper import AUDIT_KEY, NAMES, OTHER_KEY, RING, issue, register
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings

APPEND = "SELECT audit_digests_append($1, $2::jsonb)"
REGISTER = "SELECT audit_signing_key_register($1, $2::jsonb)"
KEYS = "/.well-known/audit-keys"
ROGUE = KeyRing.from_setting(new_audit_signing_key("rogue-1"))
IMPOSTOR = KeyRing.from_setting(OTHER_KEY.replace("test-audit-2", "test-audit-1"))


async def _next_digest(conn: asyncpg.Connection, ring: KeyRing) -> str:
    """The digest that continues the table's chain (digest 1 on an empty table), signed
    with `ring`: what the service would sign next, but with someone else's key."""
    last = await conn.fetchrow("SELECT * FROM audit_digests ORDER BY number DESC LIMIT 1")
    digest = Digest(
        number=last["number"] + 1 if last else 1,
        issued_at=await conn.fetchval("SELECT clock_timestamp()"),
        prev_hash=bytes(last["hash"]) if last else None,
        after_seq=last["watermark"] if last else 0,
        watermark=last["watermark"] if last else 0,
        heads=(),
        scope_key=NAMES.key_id,
    )
    return ring.sign(digest)


async def _keys(owner: asyncpg.Connection) -> list[str]:
    return [r["kid"] for r in await owner.fetch("SELECT kid FROM audit_signing_keys ORDER BY 1")]


async def _served(database: ProvisionedDatabase, **settings: Any) -> list[dict[str, str]]:
    configured = make_settings(database, audit_signing_key=AUDIT_KEY, **settings)
    async with running_app(configured) as http:
        response = await http.get(KEYS)
    assert response.status_code == 200
    keys: list[dict[str, str]] = response.json()["keys"]
    return keys


class TestTheApplicationRoleRegistersNoKey:
    async def test_a_digest_under_a_key_of_its_own_is_refused_and_never_served(
        self,
        app_pool: asyncpg.Pool,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        tenant: respx.MockRouter,
    ) -> None:
        """The review's attack: as `bff_app`, a digest that continues the chain, signed
        with `rogue-1`, and that key's public half named to the append function."""
        await issue(database)
        before = await owner.fetch("SELECT * FROM audit_digests ORDER BY number")
        async with app_pool.acquire() as conn:
            async with conn.transaction():
                jws = await _next_digest(conn, ROGUE)
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="not registered"):
                    await conn.execute(APPEND, jws, orjson.dumps(ROGUE.signer_jwk).decode())
            jwk = orjson.dumps(ROGUE.signer_jwk).decode()
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(REGISTER, "rogue-1", jwk)
        assert await owner.fetch("SELECT * FROM audit_digests ORDER BY number") == before
        assert await _keys(owner) == ["test-audit-1"]
        assert [k["kid"] for k in await _served(database)] == ["test-audit-1"]

    async def test_the_register_function_is_the_owners_alone(
        self, owner: asyncpg.Connection
    ) -> None:
        row = await owner.fetchrow(
            "SELECT p.prosecdef, p.proconfig,"
            " has_function_privilege('bff_app', p.oid, 'EXECUTE') AS app_may,"
            " EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS public_may"
            " FROM pg_proc p WHERE p.proname = 'audit_signing_key_register'"
        )
        assert (row["prosecdef"], row["app_may"], row["public_may"]) == (False, False, False)
        assert row["proconfig"] == ["search_path=pg_catalog, public, pg_temp"]


class TestTheKeySetComesFromTheSettings:
    async def test_a_database_key_never_overrides_a_configured_key(
        self, owner: asyncpg.Connection, database: ProvisionedDatabase, tenant: respx.MockRouter
    ) -> None:
        """The owner stores another key under the configured kid, and a key of their own,
        and signs a digest with each: the key set is still the configured one."""
        for ring in (IMPOSTOR, ROGUE):
            jwk = orjson.dumps(ring.signer_jwk).decode()
            await owner.execute(REGISTER, ring.kid, jwk)
            async with owner.transaction():
                await owner.execute(APPEND, await _next_digest(owner, ring), jwk)
        assert await owner.fetchval("SELECT count(*) FROM audit_digests") == 2
        served = await _served(database)
        assert served == [RING.signer_jwk]
        assert IMPOSTOR.signer_jwk["x"] not in orjson.dumps(served).decode()

    async def test_retired_keys_are_served_after_the_configured_ones(
        self, database: ProvisionedDatabase, tenant: respx.MockRouter
    ) -> None:
        retired = ROGUE.signer_jwk
        served = await _served(database, audit_retired_keys=f"old-1:{retired['x']}")
        assert served == [RING.signer_jwk, {**retired, "kid": "old-1"}]

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("old-1:AAAA", "AUDIT_RETIRED_KEYS: key old-1: X must be a 32-byte Ed25519 public key "
             "(the JWK's x) in base64url"),
            ("old 1:" + RING.signer_jwk["x"], "AUDIT_RETIRED_KEYS: entry 1 is not KID:X "
             "(KID: 1-64 of A-Z a-z 0-9 . _ -)"),
            ("test-audit-1:" + RING.signer_jwk["x"], "AUDIT_RETIRED_KEYS: key id test-audit-1 is "
             "in AUDIT_SIGNING_KEY too (a key is retired once it leaves AUDIT_SIGNING_KEY)"),
        ],
        ids=["short", "no-kid", "both"],
    )  # fmt: skip
    def test_a_malformed_retired_key_is_one_line(self, value: str, message: str) -> None:
        with pytest.raises(ConfigError) as refused:
            load_settings(
                database_url="postgresql://u@127.0.0.1/d",
                auth0_domain="tenant.example.com",
                auth0_audience="https://api.example.com",
                auth0_client_id="cid",
                auth0_client_secret="cli-secret-value",
                app_secret_key="0123456789abcdef0123456789abcdef-test",
                audit_signing_key=AUDIT_KEY,
                audit_retired_keys=value,
                _env_file=None,
            )
        assert str(refused.value) == f"configuration error: invalid setting(s): {message}"


class TestTheIssuerContinuesConfiguredKeysOnly:
    async def test_a_digest_under_a_key_it_does_not_hold_stops_the_issuer(
        self,
        pool: Database,
        owner: asyncpg.Connection,
        app_pool: asyncpg.Pool,
        database: ProvisionedDatabase,
    ) -> None:
        """The owner registers a key of their own, and has the application role append a
        digest signed with it: the service's issuer will not sign after it."""
        await issue(database)
        await owner.execute(REGISTER, ROGUE.kid, orjson.dumps(ROGUE.signer_jwk).decode())
        async with app_pool.acquire() as conn, conn.transaction():
            jws = await _next_digest(conn, ROGUE)
            await conn.execute(APPEND, jws, orjson.dumps(ROGUE.signer_jwk).decode())
        issuer = DigestIssuer(pool, RING, NAMES, interval_seconds=10)
        assert await issuer.run_once() is None
        assert issuer.stopped == (
            "refused to sign: digest 2 in the table: signed with an unknown key (kid 'rogue-1')"
        )
        assert await owner.fetchval("SELECT max(number) FROM audit_digests") == 2

    async def test_an_unregistered_key_is_logged_and_retried_not_a_stop(
        self, pool: Database, owner: asyncpg.Connection, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The operator has not run `register-key` yet: nothing was rewritten, so the issuer
        says why at every interval and signs once the key is registered."""
        issuer = DigestIssuer(pool, RING, NAMES, interval_seconds=10)
        assert await issuer.run_once() is None
        assert issuer.state() == "ok"
        assert "audit digest not stored: audit_digests_append: the key is not registered " in (
            caplog.text
        )
        await owner.execute(REGISTER, RING.kid, orjson.dumps(RING.signer_jwk).decode())
        issued = await issuer.run_once()
        assert issued is not None and issued.number == 1

    async def test_a_retired_key_in_the_settings_is_continued(
        self, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        await issue(database)  # signed with test-audit-1, then retired
        rotated = KeyRing.from_setting(OTHER_KEY)
        await register(database, rotated)
        conn = await asyncpg.connect(asyncpg_dsn(database.app_url))
        try:
            with pytest.raises(DigestRefused, match="unknown key \\(kid 'test-audit-1'\\)"):
                await issue_digest(conn, rotated, NAMES)
            retired = KeyRing.from_setting(OTHER_KEY, f"test-audit-1:{RING.signer_jwk['x']}")
            issued = (await issue_digest(conn, retired, NAMES)).issued
        finally:
            await conn.close()
        assert issued is not None and (issued.number, issued.kid) == (2, "test-audit-2")


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "MIGRATIONS_DATABASE_URL", "AUDIT_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=tmp_path,
        env={**clean, "AUDIT_SIGNING_KEY": AUDIT_KEY, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestRegisterKeyCommand:
    def test_the_owner_registers_the_configured_keys(
        self, tmp_path: Path, database: ProvisionedDatabase
    ) -> None:
        env = {"DATABASE_URL": database.app_url, "MIGRATIONS_DATABASE_URL": database.owner_url}
        first = _cli(
            tmp_path, "audit", "register-key", **env, AUDIT_SIGNING_KEY=f"{AUDIT_KEY},{OTHER_KEY}"
        )
        again = _cli(tmp_path, "audit", "register-key", **env)
        assert (first.returncode, first.stderr) == (0, "")
        assert first.stdout == (
            "audit signing key test-audit-1: registered\n"
            "audit signing key test-audit-2: registered\n"
        )
        assert (again.returncode, again.stdout) == (
            0,
            "audit signing key test-audit-1: already registered\n",
        )
        assert AUDIT_KEY.partition(":")[2] not in first.stdout + first.stderr

    async def test_the_application_role_cannot(
        self, tmp_path: Path, database: ProvisionedDatabase, owner: asyncpg.Connection
    ) -> None:
        result = _cli(tmp_path, "audit", "register-key", DATABASE_URL=database.app_url)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            "error: only the migrations owner registers keys: set MIGRATIONS_DATABASE_URL\n"
        )
        assert await _keys(owner) == []

    async def test_a_kid_that_names_another_key_is_refused(
        self, tmp_path: Path, database: ProvisionedDatabase, owner: asyncpg.Connection
    ) -> None:
        await register(database, IMPOSTOR)
        env = {"DATABASE_URL": database.app_url, "MIGRATIONS_DATABASE_URL": database.owner_url}
        result = _cli(tmp_path, "audit", "register-key", **env)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            "error: no key was registered: audit_signing_key_register: key id test-audit-1 "
            "already names another key\n"
        )
        stored = await owner.fetchval("SELECT public_jwk::text FROM audit_signing_keys")
        assert orjson.loads(stored) == IMPOSTOR.signer_jwk


@pytest.fixture
async def at_0010(template_db: ProvisionedDatabase) -> AsyncIterator[ProvisionedDatabase]:
    """A database migrated up to 0010 only, with an application login."""
    name = f"{template_db.name}_keys_{secrets.token_hex(3)}"
    app_role, password = f"{name}_app", secrets.token_urlsafe(12)
    admin = await asyncpg.connect(asyncpg_dsn(template_db.admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    owner_url = with_credentials(template_db.admin_url, database=name)
    try:
        await migrate(owner_url, [m for m in discover_migrations() if m.version < "0011"])
        owner = await asyncpg.connect(asyncpg_dsn(owner_url))
        await owner.execute(
            f"CREATE ROLE \"{app_role}\" LOGIN PASSWORD '{password}' IN ROLE bff_app"
        )
        await owner.execute(f'GRANT CONNECT ON DATABASE "{name}" TO "{app_role}"')
        await owner.close()
        app_url = with_credentials(owner_url, user=app_role, password=password)
        yield ProvisionedDatabase(template_db.admin_url, name, owner_url, app_url, app_role)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{app_role}"')
        await admin.close()


class TestUpgrade:
    async def test_a_key_stored_before_0011_signs_again_once_the_owner_registers_it(
        self, at_0010: ProvisionedDatabase
    ) -> None:
        await issue(at_0010, registered=True)  # 0009 stored the key as it signed
        upto_0011 = [m for m in discover_migrations() if m.version < "0012"]
        assert await migrate(at_0010.owner_url, upto_0011) == ["0011_audit_keys_from_the_owner"]
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="not registered"):
            await issue(at_0010, registered=True)
        await register(at_0010)
        assert (await issue(at_0010, registered=True)).number == 2
        owner = await asyncpg.connect(asyncpg_dsn(at_0010.owner_url))
        try:
            row = await owner.fetchrow("SELECT * FROM audit_signing_keys")
        finally:
            await owner.close()
        assert row["kid"] == "test-audit-1"
        assert row["first_signed_at"] is not None and row["registered_at"] is not None
