"""Scopes in digests are named by a keyed hash (HMAC-SHA-256 under AUDIT_SCOPE_KEY,
app/audit/signing.py): a tenant's token finds its own chain heads through `your_scope` in
`GET /api/audit-events/digests`, and learns neither another tenant's head nor its activity.
A new scope key names new digests only; the verifier matches an export to its heads either
way, version 1 digests (an unkeyed SHA-256) included."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import respx

from app.audit.events import Event
from app.audit.offline import ExportInvalid, verify_export
from app.audit.signing import Digest, ScopeNames, heads_of, scope_hash
from app.core.settings import ConfigError, load_settings
from devkit.db import ProvisionedDatabase
from devkit.keys import new_audit_scope_key
from tests.audit.support import ACME, ACTOR, GLOBEX, abandoned, chain, seed, window
from tests.audit.tamper import (
    AUDIT_KEY,
    NAMES,
    RING,
    SCOPE_KEY,
    fetch_export,
    forge_backdated,
    issue,
    register,
)
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings

DIGESTS = "/api/audit-events/digests"
NEXT_KEY = new_audit_scope_key("test-scope-2")


def _payload(jws: str) -> Any:
    segment = jws.split(".")[1]
    return orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Any:
    return make_settings(database, audit_signing_key=AUDIT_KEY, audit_scope_key=SCOPE_KEY)


@pytest.fixture
async def two_tenants(writer: asyncpg.Pool, database: ProvisionedDatabase) -> None:
    for _ in range(3):
        await seed(writer, ACME, Event("patient.read", "R"))
    await seed(writer, GLOBEX, Event("patient.read", "R"))
    await issue(database)


class TestKeyedNames:
    async def test_a_digest_names_no_scope_anyone_can_compute(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        globex: dict[str, str],
        two_tenants: None,
    ) -> None:
        """Today's review: GLOBEX's token found ACME's head by hashing its guessable name."""
        (item,) = (await client.get(DIGESTS, headers=globex)).json()["items"]
        payload = _payload(item["jws"])
        names = {head["scope_hash"] for head in payload["heads"]}
        assert (payload["v"], payload["scope_key"]) == (2, "test-scope-1")
        assert names == {NAMES.current(ACME), NAMES.current(GLOBEX)}
        for scope in (ACME, GLOBEX, "acme", "globex"):
            assert scope_hash(scope) not in names
        assert item["your_scope"] == NAMES.current(GLOBEX)
        (mine,) = (await client.get(DIGESTS, headers=acme)).json()["items"]
        assert mine["your_scope"] == NAMES.current(ACME) != item["your_scope"]
        assert mine["jws"] == item["jws"]

    async def test_the_auditor_finds_their_heads_through_your_scope(
        self, client: httpx.AsyncClient, acme: dict[str, str], two_tenants: None, tmp_path: Path
    ) -> None:
        files = await fetch_export(client, acme, tmp_path, **window())
        verdict = verify_export(*files)
        assert verdict.intact, verdict.message
        assert "1 signed head(s) found in the export" in verdict.message

    @pytest.mark.parametrize(
        ("other", "reason"),
        [
            ("globex", "signed it, and the export does not hold it: events were removed"),
            ("nobody", "covers it and signed no head of its scope at or after it: the event was "
             "not in the log when the digest was signed, or your_scope is not this scope's name"),
        ],
    )  # fmt: skip
    async def test_a_your_scope_that_is_not_yours_is_broken(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        two_tenants: None,
        tmp_path: Path,
        other: str,
        reason: str,
    ) -> None:
        """The verifier does not pass an export whose heads it cannot find: every event a
        digest covers must have its scope's head in that digest, and every head it signed
        for the scope must be in the export."""
        events, digests, keys = await fetch_export(client, acme, tmp_path, **window())
        item = orjson.loads(digests.read_bytes())
        name = NAMES.current(GLOBEX) if other == "globex" else "0" * 64
        digests.write_bytes(orjson.dumps({**item, "your_scope": name}) + b"\n")
        verdict = verify_export(events, digests, keys)
        assert not verdict.intact
        assert verdict.message.startswith("broken: seq ")
        assert verdict.message.endswith(f"digest 1 (line 1 of the digests) {reason}")

    async def test_a_digest_line_without_your_scope_is_named(
        self, client: httpx.AsyncClient, acme: dict[str, str], two_tenants: None, tmp_path: Path
    ) -> None:
        events, digests, keys = await fetch_export(client, acme, tmp_path, **window())
        item = orjson.loads(digests.read_bytes())
        del item["your_scope"]
        digests.write_bytes(orjson.dumps(item) + b"\n")
        with pytest.raises(ExportInvalid) as refused:
            verify_export(events, digests, keys)
        assert str(refused.value) == (
            f"{digests} line 1: no your_scope (a digest that names scopes by keyed hash needs "
            "your scope's name, as GET /api/audit-events/digests gives it)"
        )


class TestEveryCoveredEventHasItsHead:
    async def test_an_event_forged_into_a_gap_a_digest_covers_is_caught(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        writer: asyncpg.Pool,
        owner: asyncpg.Connection,
        database: ProvisionedDatabase,
        tmp_path: Path,
    ) -> None:
        """A rolled-back append leaves a seq unused; the owner later writes ACME an event at
        that seq, linked after ACME's last: no signed head differs, and the digest that
        covers the seq signed ACME's head before it."""
        await seed(writer, ACME, Event("patient.read", "R"))
        with pytest.raises(RuntimeError):
            await abandoned(writer, ACTOR, Event("patient.read", "R"))
        await seed(writer, GLOBEX, Event("patient.read", "R"))
        gap = (await chain(owner, ACME))[-1]["seq"] + 1
        await issue(database)
        await asyncio.sleep(1.1)  # the forgery is recorded (to the second) after ACME's last
        forged = await forge_backdated(owner, ACME, days=0, seq=gap)
        assert forged == gap
        verdict = verify_export(*await fetch_export(client, acme, tmp_path, **window()))
        assert verdict.message == (
            f"broken: seq {gap} (line 2): digest 1 (line 1 of the digests) covers it and signed "
            "no head of its scope at or after it: the event was not in the log when the digest "
            "was signed, or your_scope is not this scope's name"
        )


class TestANewScopeKey:
    async def test_names_new_digests_only_and_both_verify(
        self,
        database: ProvisionedDatabase,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        tenant: respx.MockRouter,
        tmp_path: Path,
    ) -> None:
        await seed(writer, ACME, Event("patient.read", "R"))
        await issue(database)
        rotated = ScopeNames.from_setting(f"{NEXT_KEY},{SCOPE_KEY}")
        await seed(writer, ACME, Event("patient.read", "R"))
        await issue(database, names=rotated)
        settings = make_settings(database, audit_signing_key=AUDIT_KEY,
                                 audit_scope_key=f"{NEXT_KEY},{SCOPE_KEY}")  # fmt: skip
        async with running_app(settings) as http:
            first, second = (await http.get(DIGESTS, headers=acme)).json()["items"]
            files = await fetch_export(http, acme, tmp_path, **window())
        assert _payload(first["jws"])["scope_key"] == "test-scope-1"
        assert _payload(second["jws"])["scope_key"] == "test-scope-2"
        assert first["your_scope"] == NAMES.current(ACME)
        assert second["your_scope"] == rotated.current(ACME) != first["your_scope"]
        verdict = verify_export(*files)
        assert verdict.intact and "2 signed head(s) found" in verdict.message, verdict.message

    async def test_a_scope_key_that_left_the_settings_names_nothing(
        self,
        database: ProvisionedDatabase,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        tenant: respx.MockRouter,
    ) -> None:
        await seed(writer, ACME, Event("patient.read", "R"))
        await issue(database)
        settings = make_settings(database, audit_signing_key=AUDIT_KEY, audit_scope_key=NEXT_KEY)
        async with running_app(settings) as http:
            (item,) = (await http.get(DIGESTS, headers=acme)).json()["items"]
        assert item["your_scope"] is None


class TestVersion1Digests:
    async def test_an_unkeyed_digest_still_verifies_beside_keyed_ones(
        self,
        client: httpx.AsyncClient,
        acme: dict[str, str],
        writer: asyncpg.Pool,
        database: ProvisionedDatabase,
        tmp_path: Path,
    ) -> None:
        """A digest from before the scope key: heads named by SHA-256, no `scope_key`."""
        await seed(writer, ACME, Event("patient.read", "R"))
        await register(database)
        async with writer.acquire() as conn, conn.transaction():
            watermark = await conn.fetchval("SELECT audit_events_watermark()")
            head = await conn.fetchrow(
                "SELECT scope, last_seq, last_hash FROM audit_chain_heads WHERE scope = $1", ACME
            )
            heads = heads_of([(ACME, head["last_seq"], bytes(head["last_hash"]))])
            now = await conn.fetchval("SELECT clock_timestamp()")
            jws = RING.sign(Digest(1, now, None, 0, watermark, heads))
            jwk = orjson.dumps(RING.signer_jwk).decode()
            await conn.execute("SELECT audit_digests_append($1, $2::jsonb)", jws, jwk)
        await seed(writer, ACME, Event("patient.read", "R"))
        await issue(database, registered=True)
        items = (await client.get(DIGESTS, headers=acme)).json()["items"]
        assert [_payload(i["jws"])["v"] for i in items] == [1, 2]
        assert items[0]["your_scope"] == scope_hash(ACME)
        verdict = verify_export(*await fetch_export(client, acme, tmp_path, **window()))
        assert verdict.intact and "2 signed head(s) found" in verdict.message, verdict.message


class TestSettings:
    BASE: dict[str, Any] = {
        "database_url": "postgresql://u@127.0.0.1/d",
        "auth0_domain": "tenant.example.com",
        "auth0_audience": "https://api.example.com",
        "auth0_client_id": "cid",
        "auth0_client_secret": "cli-secret-value",
        "app_secret_key": "0123456789abcdef0123456789abcdef-test",
        "audit_signing_key": AUDIT_KEY,
        "_env_file": None,
    }
    SECRET = SCOPE_KEY.partition(":")[2]

    def test_required_when_digests_are_on(self) -> None:
        with pytest.raises(ConfigError) as refused:
            load_settings(**self.BASE, audit_digests=True)
        assert str(refused.value) == (
            "configuration error: invalid setting(s): AUDIT_SCOPE_KEY: required when "
            "AUDIT_DIGESTS is on (ID:SECRET, docs/audit.md)"
        )

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (f"s1:{SECRET[:-4]}", "key s1: SECRET must be 32 random bytes in base64url"),
            (SECRET, "entry 1 is not KID:SECRET (KID: 1-64 of A-Z a-z 0-9 . _ -)"),
            (f"{SCOPE_KEY},{SCOPE_KEY}", "key id test-scope-1 is listed twice"),
        ],
        ids=["short", "no-id", "twice"],
    )
    def test_a_malformed_key_is_named_and_never_quoted(self, value: str, message: str) -> None:
        with pytest.raises(ConfigError) as refused:
            load_settings(**self.BASE, audit_digests=True, audit_scope_key=value)
        text = str(refused.value)
        assert text == f"configuration error: invalid setting(s): AUDIT_SCOPE_KEY: {message}"
        assert self.SECRET[:8] not in text

    def test_the_key_never_prints(self) -> None:
        settings = load_settings(**self.BASE, audit_digests=True, audit_scope_key=SCOPE_KEY)
        assert self.SECRET not in repr(settings) and self.SECRET not in str(settings.model_dump())
        assert self.SECRET not in repr(NAMES)
