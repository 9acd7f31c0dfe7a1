"""Access-token verification: the adversarial corpus.

Every hand-built bad token is refused with its own description, twice, cold and warm.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import respx
from jose import jwk

from app.auth.tokens import TokenVerifier
from devkit.keys import SigningKey, TokenMinter
from tests.auth import tokens_support as support
from tests.auth.tokens_support import (
    AUDIENCE,
    DOMAIN,
    ISSUER,
    _header,
    b64,
    forge,
    rejected,
    rs256,
    seg,
)

# pytest finds fixtures by name in the test module: bind the shared ones here.
keys = support.keys
minter = support.minter
outsider = support.outsider
jwks = support.jwks
clock = support.clock
http = support.http
make_verifier = support.make_verifier
verifier = support.verifier


# --- The adversarial corpus ---------------------------------------------------------------

Build = Callable[[TokenMinter, SigningKey], str]


@dataclass(frozen=True)
class Case:
    name: str
    build: Build
    description: str
    cheap: bool = False  # refused from the token alone, before any JWKS request


def _signed_with_changes(**header_changes: Any) -> Build:
    return lambda m, _: rs256(m.current, _header(m, **header_changes), m.claims())


def _claims(**changes: Any) -> Build:
    return lambda m, _: m.mint(**changes)


def _hs256_with_public_key(m: TokenMinter, _: SigningKey) -> str:
    secret = jwk.construct(m.current.public_jwk, "RS256").to_pem()
    signing_input = f"{seg(_header(m, alg='HS256'))}.{seg(m.claims())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _tampered_payload(m: TokenMinter, _: SigningKey) -> str:
    header, _claims_segment, signature = m.mint().split(".")
    return f"{header}.{seg(m.claims(sub='auth0|admin', permissions=['read:users']))}.{signature}"


def _tampered_signature(m: TokenMinter, _: SigningKey) -> str:
    header, claims, signature = m.mint().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[-1] ^= 0x01
    return f"{header}.{claims}.{b64(bytes(raw))}"


def _with_segments(count: int) -> Build:
    def build(m: TokenMinter, _: SigningKey) -> str:
        parts = m.mint().split(".")
        return ".".join((parts * 2)[:count])

    return build


def _raw_segments(header: str, claims: str | None = None) -> Build:
    return lambda m, _: f"{header}.{claims or seg(m.claims())}.{b64(b'x' * 256)}"


CORPUS = [
    Case(
        "alg none, empty signature",
        lambda m, _: f"{seg(_header(m, alg='none'))}.{seg(m.claims())}.",
        "algorithm not allowed",
        cheap=True,
    ),
    Case(
        "alg none with a signature",
        lambda m, _: forge(_header(m, alg="none"), m.claims()),
        "algorithm not allowed",
        cheap=True,
    ),
    Case(
        "alg None (case variant)",
        lambda m, _: forge(_header(m, alg="None"), m.claims()),
        "algorithm not allowed",
        cheap=True,
    ),
    Case(
        "HS256 signed with the public key",
        _hs256_with_public_key,
        "algorithm not allowed",
        cheap=True,
    ),
    Case(
        "HS512",
        lambda m, _: forge(_header(m, alg="HS512"), m.claims(), b"m" * 64),
        "algorithm not allowed",
        cheap=True,
    ),
    Case(
        "RS512 when only RS256 is allowed",
        lambda m, _: m.current.sign(m.claims(), algorithm="RS512"),
        "algorithm not allowed",
        cheap=True,
    ),
    Case(
        "ES256 when only RS256 is allowed",
        lambda m, _: forge(_header(m, alg="ES256"), m.claims(), b"e" * 64),
        "algorithm not allowed",
        cheap=True,
    ),
    Case(
        "alg missing",
        lambda m, _: forge(_header(m, alg=None), m.claims()),
        "algorithm not allowed",
        cheap=True,
    ),
    Case(
        "alg is a list",
        lambda m, _: forge(_header(m, alg=["RS256"]), m.claims()),
        "algorithm not allowed",
        cheap=True,
    ),
    Case(
        "typ is not a JWT",
        _signed_with_changes(typ="JOSE+JSON"),
        "unsupported token type",
        cheap=True,
    ),
    Case(
        "crit header", _signed_with_changes(crit=["exp"]), "unsupported critical header", cheap=True
    ),
    Case("kid missing", _signed_with_changes(kid=None), "missing key id", cheap=True),
    Case("kid is a number", _signed_with_changes(kid=7), "invalid key id", cheap=True),
    Case("kid empty", _signed_with_changes(kid=""), "invalid key id", cheap=True),
    Case("kid unknown", _signed_with_changes(kid="no-such-key"), "unknown signing key"),
    Case(
        "kid with a path", _signed_with_changes(kid="../../../../etc/passwd"), "unknown signing key"
    ),
    Case(
        "kid with SQL",
        _signed_with_changes(kid="x' OR '1'='1'; DROP TABLE keys; --"),
        "unknown signing key",
    ),
    Case(
        "signed by a key not in the JWKS, its own kid",
        lambda m, outsider: m.mint(key=outsider),
        "unknown signing key",
    ),
    Case(
        "signed by a key not in the JWKS, a published kid",
        lambda m, outsider: m.mint(key=outsider, headers={"kid": m.current.kid}),
        "invalid signature",
    ),
    Case("tampered payload", _tampered_payload, "invalid signature"),
    Case("tampered signature", _tampered_signature, "invalid signature"),
    Case("signature stripped", lambda m, _: m.mint().rpartition(".")[0] + ".", "invalid signature"),
    Case("expired", _claims(exp=int(time.time()) - 3600), "token expired"),
    Case("expired just past the leeway", _claims(exp=int(time.time()) - 31), "token expired"),
    Case("nbf in the future", _claims(nbf=int(time.time()) + 3600), "token not yet valid"),
    Case("iat in the future", _claims(iat=int(time.time()) + 3600), "token issued in the future"),
    Case("exp missing", _claims(exp=None), "missing exp claim"),
    Case("exp a string", _claims(exp="tomorrow"), "invalid exp claim"),
    Case("exp a boolean", _claims(exp=True), "invalid exp claim"),
    Case("nbf a string", _claims(nbf="now"), "invalid nbf claim"),
    Case("wrong iss", _claims(iss="https://evil.example.com/"), "invalid issuer"),
    Case("iss without the trailing slash", _claims(iss=f"https://{DOMAIN}"), "invalid issuer"),
    Case("iss over http", _claims(iss=f"http://{DOMAIN}/"), "invalid issuer"),
    Case("iss missing", _claims(iss=None), "invalid issuer"),
    Case("wrong aud", _claims(aud="https://other-api.example.com"), "invalid audience"),
    Case(
        "aud list without ours",
        _claims(aud=["https://a.example.com", f"{ISSUER}userinfo"]),
        "invalid audience",
    ),
    Case("aud a prefix of ours", _claims(aud=AUDIENCE + ".evil.com"), "invalid audience"),
    Case("aud missing", _claims(aud=None), "invalid audience"),
    Case("sub missing", _claims(sub=None), "missing sub claim"),
    Case("sub empty", lambda m, _: m.mint(sub=""), "missing sub claim"),
    Case("sub a number", _claims(sub=42), "missing sub claim"),
    Case("empty string", lambda m, _: "", "malformed token", cheap=True),
    Case("truncated", lambda m, _: m.mint()[:60], "malformed token", cheap=True),
    Case("2 segments", _with_segments(2), "malformed token", cheap=True),
    Case("4 segments", _with_segments(4), "malformed token", cheap=True),
    Case("5 segments (JWE shape)", _with_segments(5), "malformed token", cheap=True),
    Case("non-base64 header", _raw_segments("eyJ!!!.."), "malformed token", cheap=True),
    Case(
        "base64 padding", lambda m, _: m.mint().replace(".", "=.", 1), "malformed token", cheap=True
    ),
    Case("impossible base64 length", _raw_segments("eyJhb"), "malformed token", cheap=True),
    Case("non-JSON header", _raw_segments(b64(b"not json")), "malformed token", cheap=True),
    Case(
        "header a JSON list", _raw_segments(seg(["RS256", "key-0"])), "malformed token", cheap=True
    ),
    Case("header a JSON string", _raw_segments(seg("RS256")), "malformed token", cheap=True),
    Case("header not UTF-8", _raw_segments(b64(b'{"alg":"\xff"}')), "malformed token", cheap=True),
    Case(
        "non-JSON payload",
        lambda m, _: f"{seg(_header(m))}.{b64(b'{sub')}.{b64(b's')}",
        "malformed token",
        cheap=True,
    ),
    Case(
        "payload a JSON list",
        lambda m, _: forge(_header(m), ["auth0|user-1"]),
        "malformed token",
        cheap=True,
    ),
    Case(
        "whitespace inside",
        lambda m, _: m.mint().replace(".", " .", 1),
        "malformed token",
        cheap=True,
    ),
    Case("non-ASCII", lambda m, _: m.mint() + "é", "malformed token", cheap=True),
    Case("lone surrogate", lambda m, _: m.mint() + "\ud800", "malformed token", cheap=True),
    Case("huge token", _claims(padding="x" * 9000), "token too large", cheap=True),
]


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
async def test_adversarial_token_is_rejected_twice(
    case: Case,
    minter: TokenMinter,
    outsider: SigningKey,
    verifier: TokenVerifier,
    jwks: respx.Route,
) -> None:
    token = case.build(minter, outsider)

    assert await rejected(verifier, token) == case.description
    # A second try must not be let through by anything the first one left behind.
    assert await rejected(verifier, token) == case.description
    assert verifier.cached_tokens == 0
    if case.cheap:
        assert jwks.call_count == 0


async def test_corpus_is_rejected_with_a_warm_cache(
    minter: TokenMinter, outsider: SigningKey, verifier: TokenVerifier, jwks: respx.Route
) -> None:
    good = minter.mint()
    await verifier.verify_access_token(good)
    for case in CORPUS:
        assert await rejected(verifier, case.build(minter, outsider)) == case.description
    assert (await verifier.verify_access_token(good)).sub == "auth0|user-1"


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 30
