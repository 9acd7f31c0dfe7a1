"""DPoP (RFC 9449) on the API, through the whole app: what a client sending proofs gets, and
every proof refused with its status, problem body, `DPoP` challenge, nothing remembered and
nothing read. PUBLIC_URL is https://app.test while the app is reached as
http://testserver: a proof names the public URI, never what the request's Host says.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import respx

import app.auth.dpop
from app.auth.dpop import Nonces
from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from devkit.dpop import DPoPKey
from devkit.keys import TokenMinter
from tests.auth.dpop_support import (
    PATIENTS,
    PUBLIC_URL,
    USER,
    assert_refused,
    bound_client,
    challenge,
    remembered,
)
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem, bearer

URL = PUBLIC_URL + PATIENTS


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(database, public_url=PUBLIC_URL)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any], key: bytes = b"secret") -> str:
    """A JWT signed with HS256 under `key` (a symmetric `alg` no proof may use)."""
    signing = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    mac = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(mac)}"


class TestAccepted:
    @pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
    async def test_a_bound_token_with_its_proof(
        self, alg: str, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter, alg)

        response = await client.get(PATIENTS, headers=dpop.headers())

        assert response.status_code == 200, response.text
        assert await remembered(owner) == 1
        events = await owner.fetch("SELECT action, actor FROM audit_events")
        assert [(e["action"], e["actor"]) for e in events] == [("patient.searched", USER)]

    async def test_the_access_log_says_what_the_proof_cost(
        self, client: httpx.AsyncClient, minter: TokenMinter, caplog: pytest.LogCaptureFixture
    ) -> None:
        dpop = bound_client(minter)
        with caplog.at_level("INFO", logger="app.http.middleware"):
            response = await client.get(PATIENTS, headers=dpop.headers())
        assert response.status_code == 200
        [logged] = [r for r in caplog.records if getattr(r, "route", None) == PATIENTS]
        spent = logged.phases_ms  # type: ignore[attr-defined]
        assert {"dpop_proof", "dpop_replay"} <= set(spent)
        assert all(spent[name] >= 0 for name in ("dpop_proof", "dpop_replay"))

    async def test_a_second_request_needs_a_new_proof(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        first = await client.get(PATIENTS, headers=dpop.headers())
        second = await client.get(PATIENTS, headers=dpop.headers())
        assert (first.status_code, second.status_code) == (200, 200)
        assert await remembered(owner) == 2

    @pytest.mark.parametrize(
        "htu",
        [
            "https://APP.Test/api/patients",  # the host's case
            "HTTPS://app.test/api/patients",  # the scheme's case
            "https://app.test:443/api/patients",  # the default port
            "https://app.test/api/./patients",  # a dot segment
            "https://app.test/api/%70atients",  # an unreserved character percent-encoded
        ],
    )
    async def test_htu_is_compared_normalised(
        self, htu: str, client: httpx.AsyncClient, minter: TokenMinter
    ) -> None:
        dpop = bound_client(minter)
        response = await client.get(PATIENTS, headers=dpop.headers(url=htu))
        assert response.status_code == 200, response.text

    async def test_the_query_is_not_part_of_htu(
        self, client: httpx.AsyncClient, minter: TokenMinter
    ) -> None:
        dpop = bound_client(minter)
        response = await client.get(PATIENTS + "?limit=5", headers=dpop.headers())
        assert response.status_code == 200, response.text

    async def test_the_scheme_name_is_case_insensitive(
        self, client: httpx.AsyncClient, minter: TokenMinter
    ) -> None:
        dpop = bound_client(minter)
        headers = dpop.headers()
        headers["Authorization"] = headers["Authorization"].replace("DPoP", "dpop")
        assert (await client.get(PATIENTS, headers=headers)).status_code == 200

    async def test_a_plain_bearer_token_still_works_in_allowed_mode(
        self,
        client: httpx.AsyncClient,
        minter: TokenMinter,
        owner: asyncpg.Connection,
    ) -> None:
        response = await client.get(
            PATIENTS, headers=bearer(minter.mint(USER, permissions=["read:patients"]))
        )
        assert response.status_code == 200
        assert await remembered(owner) == 0

    async def test_anonymous_keeps_the_bearer_challenge_in_allowed_mode(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get(PATIENTS)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer realm="api"'

    async def test_fhir_takes_dpop_too(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        url = PUBLIC_URL + "/fhir/AuditEvent"
        search = "/fhir/AuditEvent?date=ge2024-01-01&date=le2024-01-31"
        response = await client.get(search, headers=dpop.headers(url=url))
        assert response.status_code == 200, response.text
        replayed = await client.get(search, headers=response.request.headers)
        assert replayed.status_code == 401
        assert replayed.json()["resourceType"] == "OperationOutcome"
        assert replayed.headers["www-authenticate"] == challenge(
            "invalid_dpop_proof", "the proof was already used (its jti is not new)"
        )
        assert await remembered(owner) == 1

    async def test_a_missing_permission_is_a_dpop_403(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        key = DPoPKey.generate()
        token = minter.mint(USER, permissions=[], cnf={"jkt": key.thumbprint})
        proof = key.proof("GET", URL, access_token=token)
        response = await client.get(
            PATIENTS, headers={"Authorization": f"DPoP {token}", "DPoP": proof}
        )

        assert_problem(response, 403)
        assert response.headers["www-authenticate"].startswith(
            'DPoP algs="ES256 EdDSA RS256", realm="api", error="insufficient_scope"'
        )


class TestRefused:
    async def test_missing_proof(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        response = await client.get(PATIENTS, headers={"Authorization": f"DPoP {dpop.token}"})
        await assert_refused(response, owner, "the request has no DPoP proof")

    async def test_two_proofs(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        headers = [
            ("Authorization", f"DPoP {dpop.token}"),
            ("DPoP", dpop.key.proof("GET", URL, access_token=dpop.token)),
            ("DPoP", dpop.key.proof("GET", URL, access_token=dpop.token)),
        ]
        response = await client.get(PATIENTS, headers=headers)
        await assert_refused(response, owner, "send exactly one DPoP proof")

    async def test_a_private_key_in_the_proof(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        headers = dpop.headers(header={"jwk": dpop.key.private_jwk})
        response = await client.get(PATIENTS, headers=headers)
        await assert_refused(response, owner, "the proof's jwk holds a private key")

    async def test_a_symmetric_alg(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": dpop.key.public_jwk}
        claims = {"jti": "j-1", "htm": "GET", "htu": URL, "iat": int(time.time())}
        proof = _unsigned(
            header, claims | {"ath": _b64(hashlib.sha256(dpop.token.encode()).digest())}
        )
        response = await client.get(
            PATIENTS, headers={"Authorization": f"DPoP {dpop.token}", "DPoP": proof}
        )
        await assert_refused(response, owner, "the proof's alg must be one of ES256 EdDSA RS256")

    async def test_alg_none(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        header = {"typ": "dpop+jwt", "alg": "none", "jwk": dpop.key.public_jwk}
        claims = {"jti": "j-1", "htm": "GET", "htu": URL, "iat": int(time.time())}
        proof = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}."
        response = await client.get(
            PATIENTS, headers={"Authorization": f"DPoP {dpop.token}", "DPoP": proof}
        )
        await assert_refused(response, owner, "the proof's alg must be one of ES256 EdDSA RS256")

    @pytest.mark.parametrize("typ", ["JWT", "at+jwt", None])
    async def test_wrong_typ(
        self,
        typ: str | None,
        client: httpx.AsyncClient,
        minter: TokenMinter,
        owner: asyncpg.Connection,
    ) -> None:
        dpop = bound_client(minter)
        response = await client.get(PATIENTS, headers=dpop.headers(header={"typ": typ}))
        await assert_refused(response, owner, "the proof's typ must be dpop+jwt")

    async def test_a_key_of_another_type_than_alg(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter, "EdDSA")
        other = DPoPKey.generate("ES256")
        response = await client.get(
            PATIENTS, headers=dpop.headers(header={"jwk": other.public_jwk})
        )
        await assert_refused(response, owner, "the proof's jwk is not a key for EdDSA")

    async def test_bad_signature(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        headers = dpop.headers()
        # Signed by another key, which the header does not name.
        impostor = DPoPKey.generate()
        forged = impostor.proof(
            "GET", URL, access_token=dpop.token, header={"jwk": dpop.key.public_jwk}
        )
        headers["DPoP"] = forged
        response = await client.get(PATIENTS, headers=headers)
        await assert_refused(response, owner, "the proof's signature does not verify")

    async def test_htm_mismatch(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        response = await client.get(PATIENTS, headers=dpop.headers("POST"))
        await assert_refused(response, owner, "the proof's htm does not match the request's method")

    @pytest.mark.parametrize(
        "htu",
        [
            "https://app.test/api/patients/",  # a trailing slash is another resource
            "https://app.test/api/Patients",  # the path's case counts
            "http://app.test/api/patients",  # another scheme
            "https://app.test:8443/api/patients",  # another port
            "https://other.test/api/patients",  # another host
            "http://testserver/api/patients",  # what the Host header says: never trusted
            "https://app.test/api/patients/1",
        ],
    )
    async def test_htu_mismatch(
        self, htu: str, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        response = await client.get(PATIENTS, headers=dpop.headers(url=htu))
        await assert_refused(response, owner, "the proof's htu does not match the request's URI")

    @pytest.mark.parametrize(
        "htu",
        [
            "https://app.test/api/patients?limit=5",  # a query, even the request's own
            "https://app.test/api/patients#top",  # a fragment
            "/api/patients",  # not absolute
            "ftp://app.test/api/patients",
        ],
    )
    async def test_htu_that_is_no_target_uri(
        self, htu: str, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        response = await client.get(PATIENTS + "?limit=5", headers=dpop.headers(url=htu))
        await assert_refused(
            response, owner, "the proof's htu is not an http(s) URI without query or fragment"
        )

    async def test_stale_iat(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        response = await client.get(PATIENTS, headers=dpop.headers(iat=time.time() - 61))
        await assert_refused(response, owner, "the proof is too old (iat)")

    async def test_future_iat(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        response = await client.get(PATIENTS, headers=dpop.headers(iat=time.time() + 61))
        await assert_refused(response, owner, "the proof is issued in the future (iat)")

    async def test_replayed_jti_on_the_same_copy(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        headers = dpop.headers()
        first = await client.get(PATIENTS, headers=headers)
        assert first.status_code == 200
        replayed = await client.get(PATIENTS, headers=headers)

        detail = "the proof was already used (its jti is not new)"
        assert_problem(replayed, 401, detail=detail)
        assert replayed.headers["www-authenticate"] == challenge("invalid_dpop_proof", detail)
        assert await remembered(owner) == 1  # the first use only
        rows = await owner.fetch("SELECT action FROM audit_events ORDER BY seq")
        assert [r["action"] for r in rows] == ["patient.searched", "access.denied"]

    async def test_wrong_ath(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        other = minter.mint(USER, cnf={"jkt": dpop.key.thumbprint})
        headers = {
            "Authorization": f"DPoP {dpop.token}",
            "DPoP": dpop.key.proof("GET", URL, access_token=other),
        }
        response = await client.get(PATIENTS, headers=headers)
        await assert_refused(response, owner, "the proof's ath does not match the access token")

    async def test_missing_ath(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        response = await client.get(PATIENTS, headers=dpop.headers(claims={"ath": None}))
        await assert_refused(response, owner, "the proof has no ath claim")

    async def test_cnf_jkt_mismatch(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        # The token is bound to one key; the proof is signed, well, by another.
        dpop = bound_client(minter, cnf={"jkt": DPoPKey.generate().thumbprint})
        response = await client.get(PATIENTS, headers=dpop.headers())
        await assert_refused(
            response, owner, "the proof's key is not the key the token is bound to"
        )

    async def test_an_unbound_token_with_the_dpop_scheme(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter, cnf=None)
        response = await client.get(PATIENTS, headers=dpop.headers())
        await assert_refused(
            response, owner, "the token is not DPoP-bound (no cnf.jkt)", error="invalid_token"
        )

    async def test_a_dpop_token_sent_as_bearer(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        response = await client.get(PATIENTS, headers=bearer(dpop.token))
        await assert_refused(
            response,
            owner,
            "the token is DPoP-bound: send it with the DPoP scheme",
            error="invalid_token",
        )

    async def test_a_proof_with_the_bearer_scheme(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        headers = dpop.headers()
        headers["Authorization"] = f"Bearer {dpop.token}"
        response = await client.get(PATIENTS, headers=headers)
        await assert_refused(
            response,
            owner,
            "a DPoP proof came with the Bearer scheme: use DPoP",
            error="invalid_token",
        )

    async def test_an_invalid_token_with_the_dpop_scheme_is_not_audited(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter, exp=int(time.time()) - 3600)
        response = await client.get(PATIENTS, headers=dpop.headers())
        await assert_refused(response, owner, "token expired", error="invalid_token", audited=False)

    async def test_a_100_kib_proof_is_refused_undecoded(
        self,
        client: httpx.AsyncClient,
        minter: TokenMinter,
        owner: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        decoded: list[str] = []
        decode = app.auth.dpop._decode
        monkeypatch.setattr(
            app.auth.dpop, "_decode", lambda proof: decoded.append(proof) or decode(proof)
        )
        dpop = bound_client(minter)
        padding = "A" * (100 * 1024)
        proof = dpop.key.proof("GET", URL, access_token=dpop.token, claims={"pad": padding})
        assert len(proof) > 100 * 1024

        response = await client.get(
            PATIENTS, headers={"Authorization": f"DPoP {dpop.token}", "DPoP": proof}
        )

        await assert_refused(response, owner, "the DPoP proof is too large")
        assert decoded == []

    @pytest.mark.parametrize("proof", [b"", b"not-a-jwt", b"a.b", b"a.b.c", b"\xe9.b.c"])
    async def test_garbage(
        self,
        proof: bytes,
        client: httpx.AsyncClient,
        minter: TokenMinter,
        owner: asyncpg.Connection,
    ) -> None:
        dpop = bound_client(minter)
        headers = {b"Authorization": f"DPoP {dpop.token}".encode(), b"DPoP": proof}
        response = await client.get(PATIENTS, headers=headers)
        await assert_refused(response, owner, "the DPoP proof is not a JWT")


class TestModes:
    async def test_required_refuses_a_bearer_token(
        self,
        database: ProvisionedDatabase,
        tenant: respx.MockRouter,
        minter: TokenMinter,
        owner: asyncpg.Connection,
    ) -> None:
        settings = make_settings(database, public_url=PUBLIC_URL, dpop_mode="required")
        token = minter.mint(USER, permissions=["read:patients"])
        async with running_app(settings) as client:
            response = await client.get(PATIENTS, headers=bearer(token))
            await assert_refused(
                response,
                owner,
                "this service accepts only DPoP-bound tokens",
                error="invalid_token",
            )
            anonymous = await client.get(PATIENTS)
            assert_problem(anonymous, 401)
            assert anonymous.headers["www-authenticate"] == challenge(None)
            accepted = await client.get(PATIENTS, headers=bound_client(minter).headers())
            assert accepted.status_code == 200

    async def test_off_refuses_the_dpop_scheme(
        self,
        database: ProvisionedDatabase,
        tenant: respx.MockRouter,
        minter: TokenMinter,
        owner: asyncpg.Connection,
    ) -> None:
        settings = make_settings(database, public_url=PUBLIC_URL, dpop_mode="off")
        async with running_app(settings) as client:
            dpop = bound_client(minter)
            response = await client.get(PATIENTS, headers=dpop.headers())
            as_bearer = await client.get(PATIENTS, headers=bearer(dpop.token))

        body = assert_problem(response, 401, detail="the Authorization scheme must be Bearer")
        assert response.headers["www-authenticate"].startswith(
            'Bearer realm="api", error="invalid_token"'
        )
        assert body["type"].endswith("/unauthorized")
        assert as_bearer.status_code == 200  # today's behaviour: cnf is not looked at
        assert await remembered(owner) == 0

    async def test_without_public_url_the_socket_origin_counts(
        self, database: ProvisionedDatabase, tenant: respx.MockRouter, minter: TokenMinter
    ) -> None:
        # The in-process transport reports the server as testserver:80 (no PUBLIC_URL: tests
        # and development only; `serve` requires it).
        settings = make_settings(database, public_url="")
        async with running_app(settings) as client:
            dpop = bound_client(minter)
            response = await client.get(
                PATIENTS, headers=dpop.headers(url="http://testserver/api/patients")
            )
        assert response.status_code == 200, response.text


class TestNonces:
    @pytest.fixture
    def nonce_settings(self, database: ProvisionedDatabase) -> Settings:
        return make_settings(
            database, public_url=PUBLIC_URL, dpop_nonce=True, dpop_nonce_seconds=60
        )

    @pytest.fixture
    async def nonce_client(
        self, nonce_settings: Settings, tenant: respx.MockRouter
    ) -> AsyncIterator[httpx.AsyncClient]:
        async with running_app(nonce_settings) as client:
            yield client

    @staticmethod
    def named(settings: Settings, seconds_ago: float) -> str:
        """The nonce the service named `seconds_ago` (every copy derives the same)."""
        key = settings.derived_key("dpop-nonce")
        return Nonces(key, 60, clock=lambda: time.time() - seconds_ago).current()

    async def test_missing_nonce_then_the_one_named(
        self, nonce_client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        response = await nonce_client.get(PATIENTS, headers=dpop.headers())

        body = await assert_refused(
            response,
            owner,
            "this service requires a nonce in the DPoP proof",
            error="use_dpop_nonce",
        )
        assert body["type"].endswith("/use-dpop-nonce")
        nonce = response.headers["dpop-nonce"]
        retried = await nonce_client.get(PATIENTS, headers=dpop.headers(nonce=nonce))
        assert retried.status_code == 200, retried.text
        assert "dpop-nonce" not in retried.headers  # it used the current one
        assert await remembered(owner) == 1

    async def test_stale_nonce(
        self,
        nonce_client: httpx.AsyncClient,
        nonce_settings: Settings,
        minter: TokenMinter,
        owner: asyncpg.Connection,
    ) -> None:
        dpop = bound_client(minter)
        # Named two periods ago: neither the current nor the previous one.
        stale = self.named(nonce_settings, seconds_ago=120)
        response = await nonce_client.get(PATIENTS, headers=dpop.headers(nonce=stale))
        await assert_refused(
            response, owner, "the proof's nonce is not current", error="use_dpop_nonce"
        )
        assert response.headers["dpop-nonce"] not in ("", stale)

    async def test_the_previous_nonce_still_works_and_the_answer_names_the_next(
        self,
        nonce_client: httpx.AsyncClient,
        nonce_settings: Settings,
        minter: TokenMinter,
        owner: asyncpg.Connection,
    ) -> None:
        dpop = bound_client(minter)
        previous = self.named(nonce_settings, seconds_ago=60)
        response = await nonce_client.get(PATIENTS, headers=dpop.headers(nonce=previous))
        assert response.status_code == 200, response.text
        assert response.headers["dpop-nonce"] not in ("", previous)
        assert await remembered(owner) == 1
