"""Signed digests of the audit chain heads (app/audit/digests.py, app/audit/signing.py):
issued once per interval whatever the copies, stored append-only, served with the keys that
check them, configured at start-up or refused in one line."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import respx

from app.audit.digests import issue_digest
from app.audit.events import Event
from app.audit.record import record_event
from app.audit.signing import Digest, KeyRing, load_public_keys, verify_digest
from app.core.db import asyncpg_dsn
from app.core.settings import ConfigError, load_settings
from devkit.db import ProvisionedDatabase
from tests.audit.support import ACME, ACTOR, GLOBEX, actions, chain, record, seed, window
from tests.audit.tamper import (
    AUDIT_KEY,
    NAMES,
    OTHER_KEY,
    RING,
    SCOPE_KEY,
    SEED,
    issue,
    register,
)
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem

DIGESTS = "/api/audit-events/digests"
APPEND = "SELECT audit_digests_append($1, $2::jsonb)"
KEYS = "/.well-known/audit-keys"


async def _stored(owner: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await owner.fetch("SELECT * FROM audit_digests ORDER BY number"))


def _read(jws: str, ring: KeyRing = RING) -> Any:
    return verify_digest(jws, load_public_keys({"keys": list(ring.public)}))


class TestIssueDigest:
    async def test_the_first_digest_signs_every_scopes_head(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        await record(app_pool, ACTOR, Event("user.signed_in", "E"), Event("patient.read", "R"))
        await seed(app_pool, GLOBEX, Event("patient.read", "R"))
        issued = await issue(database)
        (stored,) = await _stored(owner)
        digest = _read(stored["jws"])
        acme, globex = (await chain(owner, ACME))[-1], (await chain(owner, GLOBEX))[-1]
        assert (digest.number, digest.prev_hash, digest.after_seq) == (1, None, 0)
        assert digest.watermark == issued.watermark >= globex["seq"]
        assert {(h.scope_hash, h.last_seq, h.last_hash) for h in digest.heads} == {
            (NAMES.current(ACME), acme["seq"], acme["hash"]),
            (NAMES.current(GLOBEX), globex["seq"], globex["hash"]),
        }
        assert digest.kid == stored["kid"] == "test-audit-1"
        assert stored["hash"] == hashlib.sha256(stored["jws"].encode()).digest()
        assert b"acme" not in orjson.dumps(_payload(stored["jws"]))  # scopes stay private

    async def test_the_next_digest_signs_what_changed_and_names_the_one_before(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        await seed(app_pool, ACME, Event("patient.read", "R"))
        await seed(app_pool, GLOBEX, Event("patient.read", "R"))
        await issue(database)
        await seed(app_pool, ACME, Event("patient.read", "R"))
        await issue(database)
        await issue(database)
        first, second, third = (_read(r["jws"]) for r in await _stored(owner))
        acme = (await chain(owner, ACME))[-1]
        assert (second.number, second.prev_hash, second.after_seq) == (
            2,
            first.hash,
            first.watermark,
        )
        assert [(h.scope_hash, h.last_seq) for h in second.heads] == [
            (NAMES.current(ACME), acme["seq"])
        ]
        assert (third.prev_hash, third.heads) == (second.hash, ())  # nothing changed: still one

    async def test_an_event_committed_after_a_digest_is_signed_by_the_next(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        """A digest covers every event up to the watermark: an open transaction's event and
        the events after it wait for the next digest, none is skipped."""
        await seed(app_pool, GLOBEX, Event("patient.read", "R"))
        async with app_pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await record_event(conn, ACTOR, Event("patient.read", "R"))
            await seed(app_pool, GLOBEX, Event("patient.read", "R"))  # committed first
            first = await issue(database)
            await transaction.commit()
        second = await issue(database)
        acme, globex = (await chain(owner, ACME))[-1], await chain(owner, GLOBEX)
        heads = [{h.scope_hash: h.last_seq for h in _read(r["jws"]).heads}
                 for r in await _stored(owner)]  # fmt: skip
        assert heads[0] == {NAMES.current(GLOBEX): globex[0]["seq"]}
        assert first.watermark < acme["seq"] < globex[1]["seq"] <= second.watermark
        assert heads[1] == {
            NAMES.current(ACME): acme["seq"],
            NAMES.current(GLOBEX): globex[1]["seq"],
        }

    async def test_one_digest_per_interval_however_many_copies_try(
        self, database: ProvisionedDatabase, owner: asyncpg.Connection
    ) -> None:
        async def copy() -> Any:
            conn = await asyncpg.connect(asyncpg_dsn(database.app_url))
            try:
                return (await issue_digest(conn, RING, NAMES, interval_seconds=86_400)).issued
            finally:
                await conn.close()

        await register(database)
        issued = await asyncio.gather(*(copy() for _ in range(4)))
        assert sum(1 for i in issued if i is not None) == 1
        assert await copy() is None
        assert len(await _stored(owner)) == 1

    async def test_the_database_refuses_a_digest_that_does_not_continue_the_chain(
        self, app_pool: asyncpg.Pool, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        await seed(app_pool, ACME, Event("patient.read", "R"))
        await issue(database)
        (stored,) = await _stored(owner)
        first = _read(stored["jws"])
        impostor = KeyRing.from_setting(OTHER_KEY.replace("test-audit-2", "test-audit-1"))

        def digest(now: Any, **changes: Any) -> Digest:
            values = {
                "number": 2,
                "issued_at": now,
                "prev_hash": first.hash,
                "after_seq": first.watermark,
                "watermark": first.watermark,
                "heads": (),
            }
            return Digest(**(values | changes))  # fmt: skip

        jwk, other = (orjson.dumps(r.signer_jwk).decode() for r in (RING, impostor))
        attempts: list[Callable[[Any], tuple[str, str]]] = [
            lambda now: (RING.sign(digest(now, number=3)), jwk),  # skips a number
            lambda now: (RING.sign(digest(now, prev_hash=b"\x01" * 32)), jwk),  # another chain
            lambda now: (RING.sign(digest(first.issued_at)), jwk),  # backdated
            lambda now: (RING.sign(digest(now, watermark=10**9)), jwk),  # seqs never handed out
            lambda now: (RING.sign(digest(now, after_seq=0)), jwk),  # not where the last ended
            lambda now: (RING.sign(digest(now)), other),  # another key's kid and x
            lambda now: (impostor.sign(digest(now)), other),  # a kid naming another key
            lambda now: ("not-a-jws", jwk),
            lambda now: ("e30.e30.", jwk),  # {} and {}: no alg, no payload
        ]
        async with app_pool.acquire() as conn:
            for attempt in attempts:
                async with conn.transaction():
                    jws, key = attempt(await conn.fetchval("SELECT clock_timestamp()"))
                    with pytest.raises(asyncpg.PostgresError):
                        await conn.execute(APPEND, jws, key)
            assert await _stored(owner) == [stored]
            async with conn.transaction():  # the same, without the fault, is accepted
                jws, key = RING.sign(digest(await conn.fetchval("SELECT clock_timestamp()"))), jwk
                assert await conn.fetchval(APPEND, jws, key) == 2
        assert len(await owner.fetch("SELECT * FROM audit_signing_keys")) == 1

    async def test_digests_and_keys_are_append_only_even_for_the_owner(
        self, owner: asyncpg.Connection, database: ProvisionedDatabase
    ) -> None:
        await issue(database)
        before = await _stored(owner)
        for statement in (
            "UPDATE audit_digests SET kid = kid",
            "DELETE FROM audit_digests",
            "TRUNCATE audit_digests",
            "UPDATE audit_signing_keys SET kid = kid",
            "DELETE FROM audit_signing_keys",
            "TRUNCATE audit_signing_keys CASCADE",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await owner.execute(statement)
        assert await _stored(owner) == before


def _payload(jws: str) -> Any:
    segment = jws.split(".")[1]
    return orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


class TestSettings:
    BASE: dict[str, Any] = {
        "database_url": "postgresql://u@127.0.0.1/d",
        "auth0_domain": "tenant.example.com",
        "auth0_audience": "https://api.example.com",
        "auth0_client_id": "cid",
        "auth0_client_secret": "cli-secret-value",
        "app_secret_key": "0123456789abcdef0123456789abcdef-test",
        "_env_file": None,
    }

    def test_digests_on_without_a_key_stop_start_up_naming_it(self) -> None:
        with pytest.raises(ConfigError) as refused:
            load_settings(**self.BASE, audit_digests=True, audit_scope_key=SCOPE_KEY)
        assert str(refused.value) == (
            "configuration error: invalid setting(s): AUDIT_SIGNING_KEY: required when "
            "AUDIT_DIGESTS is on (KID:SEED, docs/audit.md)"
        )

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (f"k1:{SEED[:-4]}", "key k1: SEED must be a 32-byte Ed25519 private key in base64url"),
            (f"k1:{SEED}AAAA", "key k1: SEED must be a 32-byte Ed25519 private key in base64url"),
            (f"k1:{SEED[:-1]}+", "key k1: SEED must be a 32-byte Ed25519 private key in base64url"),
            (SEED, "entry 1 is not KID:SEED (KID: 1-64 of A-Z a-z 0-9 . _ -)"),
            (f"a key:{SEED}", "entry 1 is not KID:SEED (KID: 1-64 of A-Z a-z 0-9 . _ -)"),
            (
                f"{AUDIT_KEY},{OTHER_KEY},",
                "entry 3 is not KID:SEED (KID: 1-64 of A-Z a-z 0-9 . _ -)",
            ),
            (f"{AUDIT_KEY},{AUDIT_KEY}", "key id test-audit-1 is listed twice"),
        ],
        ids=["short", "long", "not-base64url", "no-kid", "bad-kid", "empty-entry", "twice"],
    )
    def test_a_malformed_key_is_named_and_never_quoted(self, value: str, message: str) -> None:
        with pytest.raises(ConfigError) as refused:
            load_settings(
                **self.BASE, audit_digests=True, audit_signing_key=value, audit_scope_key=SCOPE_KEY
            )
        text = str(refused.value)
        assert text == f"configuration error: invalid setting(s): AUDIT_SIGNING_KEY: {message}"
        assert SEED[:8] not in text

    def test_the_key_never_prints(self) -> None:
        settings = load_settings(
            **self.BASE, audit_digests=True, audit_signing_key=AUDIT_KEY, audit_scope_key=SCOPE_KEY
        )
        assert SEED not in repr(settings) and SEED not in str(settings.model_dump())
        assert SEED not in repr(KeyRing.from_setting(AUDIT_KEY))

    def test_serve_refuses_to_start_in_one_line(self, tmp_path: Path) -> None:
        result = _cli(tmp_path, "serve", AUDIT_DIGESTS="true", AUDIT_SCOPE_KEY=SCOPE_KEY,
                      DATABASE_URL="postgresql://u@127.0.0.1/d",
                      AUTH0_DOMAIN="t.example.com", AUTH0_AUDIENCE="a", AUTH0_CLIENT_ID="c",
                      AUTH0_CLIENT_SECRET="s", APP_SECRET_KEY="k" * 32)  # fmt: skip
        assert result.returncode == 2
        assert result.stderr.strip() == (
            "error: configuration error: invalid setting(s): AUDIT_SIGNING_KEY: required when "
            "AUDIT_DIGESTS is on (KID:SEED, docs/audit.md)"
        )


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH0_", "DATABASE_URL", "MIGRATIONS_DATABASE_URL", "AUDIT_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestDigestCommand:
    def test_issues_a_digest_now(
        self, tmp_path: Path, database: ProvisionedDatabase, owner: asyncpg.Connection
    ) -> None:
        env = {"DATABASE_URL": database.app_url, "AUDIT_SIGNING_KEY": AUDIT_KEY,
               "AUDIT_SCOPE_KEY": SCOPE_KEY}  # fmt: skip
        registered = _cli(tmp_path, "audit", "register-key", **env,
                          MIGRATIONS_DATABASE_URL=database.owner_url)  # fmt: skip
        assert registered.returncode == 0, registered.stderr
        first, second = (
            _cli(tmp_path, "audit", "digest", **env),
            _cli(tmp_path, "audit", "digest", **env),
        )
        assert (first.returncode, second.returncode) == (0, 0), first.stderr
        assert first.stdout.startswith("issued audit digest 1 at ")
        assert first.stdout.rstrip().endswith(
            "with key test-audit-1: 0 chain head(s), events up to seq 0"
        )
        assert second.stdout.startswith("issued audit digest 2 at ")
        assert SEED not in first.stdout + first.stderr + second.stdout + second.stderr

    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            (None, "error: configuration error: missing required setting(s): AUDIT_SIGNING_KEY"),
            ("k1:c2VjcmV0LXNlZWQ", "error: configuration error: invalid setting(s): "
             "AUDIT_SIGNING_KEY: key k1: SEED must be a 32-byte Ed25519 private key in base64url"),
        ],
    )  # fmt: skip
    def test_a_missing_or_malformed_key_is_one_line(
        self,
        tmp_path: Path,
        database: ProvisionedDatabase,
        key: str | None,
        expected: str,
    ) -> None:
        env = {"DATABASE_URL": database.app_url, "AUDIT_SCOPE_KEY": SCOPE_KEY}
        env |= {"AUDIT_SIGNING_KEY": key} if key else {}
        result = _cli(tmp_path, "audit", "digest", **env)
        assert (result.returncode, result.stderr.strip(), result.stdout) == (2, expected, "")
        assert "c2VjcmV0LXNlZWQ" not in result.stderr


class TestDigestIssuer:
    async def test_copies_of_the_service_issue_one_digest_at_start(
        self,
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
        tenant: respx.MockRouter,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        settings = make_settings(database, audit_digests=True, audit_signing_key=AUDIT_KEY,
                                 audit_scope_key=SCOPE_KEY,
                                 audit_digest_interval_seconds=86_400)  # fmt: skip
        await register(database)
        async with running_app(settings), running_app(settings):
            for _ in range(100):
                if await _stored(owner):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            (stored,) = await _stored(owner)
        assert _read(stored["jws"]).number == 1
        assert "audit digest issued" in caplog.text and SEED not in caplog.text


@pytest.fixture
async def three_digests(
    writer: asyncpg.Pool, database: ProvisionedDatabase, owner: asyncpg.Connection
) -> list[asyncpg.Record]:
    for _ in range(3):
        await seed(writer, ACME, Event("patient.read", "R"))
        await issue(database)
    return await _stored(owner)


class TestListDigests:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get(DIGESTS), 401)

    async def test_missing_permission(
        self,
        client: httpx.AsyncClient,
        unprivileged: dict[str, str],
        owner: asyncpg.Connection,
        three_digests: list[asyncpg.Record],
    ) -> None:
        before = await actions(owner)
        assert_problem(await client.get(DIGESTS, headers=unprivileged), 403)
        assert await actions(owner) == [*before, "access.denied"]
        assert await _stored(owner) == three_digests

    async def test_ok(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        three_digests: list[asyncpg.Record],
    ) -> None:
        response = await client.get(DIGESTS, headers=acme)
        assert response.status_code == 200
        body = response.json()
        assert body["next_cursor"] is None
        assert [item["number"] for item in body["items"]] == [1, 2, 3]  # newest last
        for item, stored in zip(body["items"], three_digests, strict=True):
            digest = _read(item["jws"])
            assert item["jws"] == stored["jws"]
            assert (item["hash"], item["kid"], item["watermark"]) == (
                digest.hash.hex(), digest.kid, digest.watermark)  # fmt: skip
            assert item["prev_hash"] == (digest.prev_hash.hex() if digest.prev_hash else None)
        read = await owner.fetchrow("SELECT * FROM audit_events ORDER BY seq DESC LIMIT 1")
        assert (read["action"], read["scope"]) == ("audit.read", ACME)
        assert orjson.loads(read["detail"]) == {"view": "digests", "returned": 3}

    async def test_keyset_pages_and_window(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        three_digests: list[asyncpg.Record],
    ) -> None:
        numbers: list[int] = []
        params: dict[str, Any] = {"limit": 2}
        while True:
            body = (await client.get(DIGESTS, params=params, headers=acme)).json()
            numbers += [item["number"] for item in body["items"]]
            if body["next_cursor"] is None:
                break
            params["cursor"] = body["next_cursor"]
        assert numbers == [1, 2, 3]
        since = three_digests[1]["issued_at"].isoformat()
        until = three_digests[2]["issued_at"].isoformat()
        body = (await client.get(DIGESTS, params={"since": since, "until": until},
                                 headers=acme)).json()  # fmt: skip
        assert [item["number"] for item in body["items"]] == [2]

    @pytest.mark.parametrize(
        ("params", "status", "field"),
        [
            ({"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, 422, "until"),
            ({"since": "2025-01-01T00:00:00"}, 422, "since"),
            ({"since": "0001-01-01T00:00:00+05:00"}, 422, "since"),
            ({"until": "9999-12-31T23:59:59-05:00"}, 422, "until"),
            ({"limit": "0"}, 422, "limit"),
            ({"limit": "201"}, 422, "limit"),
            ({"limit": "many"}, 422, "limit"),
            ({"bogus": "1"}, 422, "bogus"),
            ({"cursor": "not-a-cursor"}, 400, "cursor"),
        ],
    )
    async def test_bad_input(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        three_digests: list[asyncpg.Record],
        params: dict[str, str],
        status: int,
        field: str,
    ) -> None:
        before = await actions(owner)
        assert_problem(await client.get(DIGESTS, params=params, headers=acme), status, field)
        assert await actions(owner) == before
        assert await _stored(owner) == three_digests

    async def test_a_cursor_from_another_list_or_window(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        owner: asyncpg.Connection,
        three_digests: list[asyncpg.Record],
    ) -> None:
        page = (await client.get(DIGESTS, params={"limit": 1}, headers=acme)).json()
        events = (await client.get("/api/audit-events", params=window(limit=1),
                                   headers=acme)).json()  # fmt: skip
        before = await actions(owner)
        for params in (
            {"limit": 1, "cursor": events["next_cursor"]},
            {"limit": 1, "cursor": page["next_cursor"], "since": "2020-01-01T00:00:00Z"},
        ):
            response = await client.get(DIGESTS, params=params, headers=acme)
            assert_problem(response, 400, "cursor")
        assert await actions(owner) == before


class TestAuditKeys:
    async def test_served_without_authentication(
        self, database: ProvisionedDatabase, tenant: respx.MockRouter
    ) -> None:
        settings = make_settings(database, audit_signing_key=f"{AUDIT_KEY},{OTHER_KEY}")
        async with running_app(settings) as http:
            response = await http.get(KEYS)
        assert response.status_code == 200
        assert response.headers["cache-control"] == "public, max-age=300"
        keys = response.json()["keys"]
        assert keys == [*KeyRing.from_setting(f"{AUDIT_KEY},{OTHER_KEY}").public]
        assert all(k.keys() == {"kty", "crv", "x", "kid", "use", "alg"} for k in keys)
        assert SEED not in response.text

    async def test_a_retired_key_is_served_from_the_settings(
        self, database: ProvisionedDatabase, tenant: respx.MockRouter
    ) -> None:
        await issue(database)  # signed with test-audit-1, which is then retired
        retired = f"test-audit-1:{RING.signer_jwk['x']}"
        settings = make_settings(database, audit_signing_key=OTHER_KEY, audit_retired_keys=retired)
        async with running_app(settings) as http:
            keys = (await http.get(KEYS)).json()["keys"]
        assert [k["kid"] for k in keys] == ["test-audit-2", "test-audit-1"]
        assert keys[1] == RING.signer_jwk

    async def test_no_key_configured_and_none_used(self, client: httpx.AsyncClient) -> None:
        response = await client.get(KEYS)
        assert (response.status_code, response.json()) == (200, {"keys": []})
