"""A proof's signature is checked on every request, whatever the service remembers from the
proofs before it: an ES256 signature must be the raw r||s of RFC 7518 (a DER one, as
OpenSSL makes, is refused), and a header already accepted with one proof (remembered with
its key, so it is not decoded or hashed again) does not vouch for the next proof's
signature or claims. PUBLIC_URL is https://app.test, as in test_dpop.py."""

from __future__ import annotations

import base64
import time
import uuid

import asyncpg
import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from app.auth.dpop import (
    HEADER_CACHE_SIZE,
    URI_CACHE_SIZE,
    DPoPRefused,
    DPoPVerifier,
    Presented,
)
from app.core.settings import Settings
from app.core.settings.dpop import DPoPSettings
from devkit.db import ProvisionedDatabase
from devkit.dpop import DPoPKey, ath
from devkit.keys import TokenMinter
from tests.auth.dpop_support import (
    PATIENTS,
    PUBLIC_URL,
    USER,
    Client,
    assert_refused,
    bound_client,
    challenge,
    remembered,
)
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem

URL = PUBLIC_URL + PATIENTS
BAD_SIGNATURE = "the proof's signature does not verify"


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(database, public_url=PUBLIC_URL)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(dpop: Client, url: str = URL) -> str:
    body = {
        "jti": uuid.uuid4().hex,
        "htm": "GET",
        "htu": url,
        "iat": int(time.time()),
        "ath": ath(dpop.token),
    }
    return _b64(orjson.dumps(body))


def _header_of(dpop: Client) -> str:
    """The encoded header the client's proofs carry (the same bytes every time)."""
    return dpop.headers()["DPoP"].split(".")[0]


def _signed_by(key: object, alg: str, signing_input: str) -> bytes:
    data = signing_input.encode()
    if alg == "ES256":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.sign(data, ec.ECDSA(hashes.SHA256()))  # DER, not r||s
    if alg == "RS256":
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key.sign(data)


def _request(dpop: Client, proof: str) -> dict[str, str]:
    return {"Authorization": f"DPoP {dpop.token}", "DPoP": proof}


async def _refused_after_one_accepted(
    response: httpx.Response, owner: asyncpg.Connection, detail: str
) -> None:
    assert_problem(response, 401, detail=detail)
    assert response.headers["www-authenticate"] == challenge("invalid_dpop_proof", detail)
    assert await remembered(owner) == 1  # the accepted proof only
    rows = await owner.fetch("SELECT action, actor FROM audit_events ORDER BY seq")
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("patient.searched", USER),
        ("access.denied", USER),
    ]


class TestES256Signatures:
    async def test_a_der_signature_is_refused(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        signing_input = f"{_header_of(dpop)}.{_claims(dpop)}"
        der = _signed_by(dpop.key.key.get_op_key("sign"), "ES256", signing_input)
        # The signature is good, only not in the form JWS uses.
        dpop.key.key.get_op_key("verify").verify(
            der, signing_input.encode(), ec.ECDSA(hashes.SHA256())
        )

        response = await client.get(
            PATIENTS, headers=_request(dpop, f"{signing_input}.{_b64(der)}")
        )

        await assert_refused(response, owner, BAD_SIGNATURE)

    async def test_a_truncated_signature_is_refused(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        header, claims, signature = dpop.headers()["DPoP"].split(".")
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        proof = f"{header}.{claims}.{_b64(raw[:-1])}"

        response = await client.get(PATIENTS, headers=_request(dpop, proof))

        await assert_refused(response, owner, BAD_SIGNATURE)


class TestAKnownHeader:
    @pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
    async def test_does_not_vouch_for_the_next_signature(
        self,
        alg: str,
        client: httpx.AsyncClient,
        minter: TokenMinter,
        owner: asyncpg.Connection,
    ) -> None:
        dpop = bound_client(minter, alg)
        accepted = await client.get(PATIENTS, headers=dpop.headers())
        assert accepted.status_code == 200, accepted.text
        impostor = {
            "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
            "RS256": lambda: rsa.generate_private_key(65537, 2048),
            "EdDSA": ed25519.Ed25519PrivateKey.generate,
        }[alg]()
        signing_input = f"{_header_of(dpop)}.{_claims(dpop)}"
        signature = _signed_by(impostor, alg, signing_input)
        if alg == "ES256":  # the impostor's signature in the right form
            r, s = decode_dss_signature(signature)
            signature = r.to_bytes(32) + s.to_bytes(32)

        forged = await client.get(
            PATIENTS, headers=_request(dpop, f"{signing_input}.{_b64(signature)}")
        )

        await _refused_after_one_accepted(forged, owner, BAD_SIGNATURE)

    async def test_does_not_vouch_for_the_next_claims(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        accepted = await client.get(PATIENTS, headers=dpop.headers())
        assert accepted.status_code == 200, accepted.text

        elsewhere = await client.get(PATIENTS, headers=dpop.headers(url=PUBLIC_URL + "/api/me"))

        await _refused_after_one_accepted(
            elsewhere, owner, "the proof's htu does not match the request's URI"
        )

    async def test_a_refused_header_stays_refused(
        self, client: httpx.AsyncClient, minter: TokenMinter, owner: asyncpg.Connection
    ) -> None:
        dpop = bound_client(minter)
        wrong = {"typ": "JWT"}
        first = await client.get(PATIENTS, headers=dpop.headers(header=wrong))
        second = await client.get(PATIENTS, headers=dpop.headers(header=wrong))

        detail = "the proof's typ must be dpop+jwt"
        for response in (first, second):
            assert_problem(response, 401, detail=detail)
            assert response.headers["www-authenticate"] == challenge("invalid_dpop_proof", detail)
        assert await remembered(owner) == 0
        rows = await owner.fetch("SELECT action FROM audit_events ORDER BY seq")
        assert [r["action"] for r in rows] == ["access.denied", "access.denied"]


class TestWhatTheVerifierRemembers:
    """Bounded, and only what a key signed: a sender cannot grow the service's memory."""

    def _verifier(self) -> DPoPVerifier:
        return DPoPVerifier(
            DPoPSettings(mode="allowed"), _NoReplays(), origin=PUBLIC_URL, nonce_key=b"k" * 32
        )

    def test_a_header_whose_proof_does_not_verify_is_not_remembered(self) -> None:
        verifier = self._verifier()
        victim, impostor = DPoPKey.generate(), DPoPKey.generate()
        forged = impostor.proof("GET", URL, access_token="t", header={"jwk": victim.public_jwk})
        with pytest.raises(DPoPRefused, match="signature does not verify"):
            verifier.verify_proof(Presented("dpop", "t", [forged], "GET", PATIENTS, ""))
        assert len(verifier._headers) == 0

    def test_headers_and_uris_stay_bounded(self) -> None:
        verifier = self._verifier()
        key = DPoPKey.generate("EdDSA")
        for n in range(HEADER_CACHE_SIZE + 10):
            proof = key.proof("GET", URL, access_token="t", header={"kid": str(n)})
            verifier.verify_proof(Presented("dpop", "t", [proof], "GET", PATIENTS, ""))
        long = key.proof("GET", URL, access_token="t", header={"kid": "k" * 2000})
        verifier.verify_proof(Presented("dpop", "t", [long], "GET", PATIENTS, ""))
        assert len(verifier._headers) == HEADER_CACHE_SIZE
        assert long.split(".")[0].encode() not in verifier._headers
        assert len(verifier._uris) <= URI_CACHE_SIZE


class _NoReplays:
    async def first_use(self, key: bytes, until: float) -> bool:
        return True

    async def aclose(self) -> None:
        return None
