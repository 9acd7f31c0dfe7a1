"""Access-token verification: the adversarial corpus, the JWKS cache, the verified-token cache.

Tokens are minted with keys generated here and served through a respx-stubbed JWKS. Time is
a fake clock handed to the verifier, so TTLs, cooldowns and expiry are exercised without
sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import string
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk, jwt

from app.auth.tokens import FETCHES_PER_COOLDOWN, Principal, TokenVerifier
from app.core.errors import Unauthorized, UpstreamUnavailable
from app.core.settings import Settings
from app.dev.keys import SigningKey, TokenMinter

DOMAIN = "tenant.example.com"
ISSUER = f"https://{DOMAIN}/"
AUDIENCE = "https://api.example.com"
JWKS_URL = "http://tenant.test/.well-known/jwks.json"


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": "postgresql://x@127.0.0.1/db",
        "auth0_domain": DOMAIN,
        "auth0_audience": AUDIENCE,
        "auth0_client_id": "cid",
        "auth0_client_secret": "secret",
        "auth0_base_url": "http://tenant.test",
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)


class FakeClock:
    """Wall and monotonic time that move only when a test says so."""

    def __init__(self) -> None:
        self.wall = time.time()
        self.mono = 1_000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seg(value: Any) -> str:
    return b64(json.dumps(value).encode())


def forge(header: Any, claims: Any, signature: bytes = b"\x01" * 256) -> str:
    """A token built by hand: any header, any claims, any signature bytes."""
    return f"{seg(header)}.{seg(claims)}.{b64(signature)}"


def rs256(key: SigningKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Sign exactly this header (no defaults added) with an RSA key."""
    signing_input = f"{seg(header)}.{seg(claims)}".encode()
    private = jwk.construct(key.private_pem.decode(), "RS256")
    return f"{signing_input.decode()}.{b64(private.sign(signing_input))}"


@pytest.fixture(scope="module")
def keys() -> list[SigningKey]:
    return [SigningKey.generate(kid=f"key-{n}") for n in range(3)]


@pytest.fixture
def minter(keys: list[SigningKey]) -> TokenMinter:
    return TokenMinter(DOMAIN, AUDIENCE, keys=[keys[0]])


@pytest.fixture
def outsider(keys: list[SigningKey]) -> SigningKey:
    """A key the tenant never published."""
    return keys[2]


@pytest.fixture
def jwks(minter: TokenMinter) -> Iterator[respx.Route]:
    """The tenant's JWKS endpoint, serving whatever `minter` currently publishes."""
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        route = router.get(JWKS_URL).mock(
            side_effect=lambda request: httpx.Response(
                200, json=minter.jwks(), headers={"Cache-Control": "public, max-age=600"}
            )
        )
        yield route


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def make_verifier(http: httpx.AsyncClient, clock: FakeClock) -> Callable[..., TokenVerifier]:
    def make(**overrides: Any) -> TokenVerifier:
        return TokenVerifier(
            make_settings(**overrides), http, clock=clock.time, monotonic=clock.monotonic
        )

    return make


@pytest.fixture
def verifier(make_verifier: Callable[..., TokenVerifier]) -> TokenVerifier:
    return make_verifier()


async def rejected(verifier: TokenVerifier, token: str) -> str:
    """The description the verifier gives for a refused token."""
    with pytest.raises(Unauthorized) as caught:
        await verifier.verify_access_token(token)
    challenge = caught.value.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in challenge
    if len(token) > 8:  # never echoed (a short string is in any text by chance)
        assert token not in challenge and token not in caught.value.detail
    return caught.value.detail


# --- The adversarial corpus ---------------------------------------------------------------

Build = Callable[[TokenMinter, SigningKey], str]


@dataclass(frozen=True)
class Case:
    name: str
    build: Build
    description: str
    cheap: bool = False  # refused from the token alone, before any JWKS request


def _header(minter: TokenMinter, **changes: Any) -> dict[str, Any]:
    header = {"alg": "RS256", "typ": "JWT", "kid": minter.current.kid, **changes}
    return {k: v for k, v in header.items() if v is not None}


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


# --- Accepted tokens and the Principal ----------------------------------------------------


async def test_principal_carries_the_claims_a_handler_needs(
    minter: TokenMinter, make_verifier: Callable[..., TokenVerifier], jwks: respx.Route
) -> None:
    verifier = make_verifier(auth0_email_verified_claim="https://bff.example.com/email_verified")
    namespaced: dict[str, Any] = {"https://bff.example.com/email_verified": True}
    token = minter.mint(
        "auth0|alice",
        permissions=["read:patients", "create:patients"],
        org_id="org_123",
        amr=["pwd", "mfa"],
        sid="session-1",
        jti="token-1",
        **namespaced,
    )

    found = await verifier.verify_access_token(token)

    assert found.sub == "auth0|alice"
    assert found.permissions == {"read:patients", "create:patients"}
    assert found.scopes == {"openid", "profile", "email", "read:patients", "create:patients"}
    assert found.org_id == "org_123"
    assert found.client_id == "spa-client-id"
    assert (found.sid, found.jti) == ("session-1", "token-1")
    assert found.amr == ("pwd", "mfa")
    assert found.email_verified is True
    assert found.exp == found.claims["exp"] and found.iat == found.claims["iat"]
    with pytest.raises(AttributeError):
        found.sub = "someone else"  # type: ignore[misc]


async def test_client_credentials_permissions_come_from_scope_and_client_id(
    minter: TokenMinter, verifier: TokenVerifier, jwks: respx.Route
) -> None:
    claims = minter.claims(
        scope="read:patients openid", azp=None, client_id="m2m-client", gty="client-credentials"
    )
    del claims["permissions"]
    token = minter.current.sign(claims)

    found = await verifier.verify_access_token(token)

    assert found.permissions == {"read:patients", "openid"}
    assert found.client_id == "m2m-client"
    assert found.email_verified is None and found.amr == () and found.org_id is None


@pytest.mark.parametrize(
    "header",
    [{"typ": "at+jwt"}, {"typ": "application/at+jwt"}, {"typ": None}],
    ids=["at+jwt", "application/at+jwt", "no typ"],
)
async def test_accepted_token_types(
    header: dict[str, Any], minter: TokenMinter, verifier: TokenVerifier, jwks: respx.Route
) -> None:
    token = rs256(minter.current, _header(minter, **header), minter.claims())
    assert (await verifier.verify_access_token(token)).sub == "auth0|user-1"


async def test_audience_as_a_string_and_expiry_within_leeway_are_accepted(
    minter: TokenMinter, verifier: TokenVerifier, jwks: respx.Route
) -> None:
    token = minter.mint(aud=AUDIENCE, exp=int(time.time()) - 10, nbf=int(time.time()) + 10)
    assert (await verifier.verify_access_token(token)).sub == "auth0|user-1"


async def test_algorithm_must_match_the_key(
    minter: TokenMinter,
    make_verifier: Callable[..., TokenVerifier],
    keys: list[SigningKey],
    jwks: respx.Route,
) -> None:
    verifier = make_verifier(auth0_algorithms=["RS256", "RS512"])
    unpinned = SigningKey(
        kid="unpinned",
        private_pem=keys[1].private_pem,
        public_jwk={**keys[1].public_jwk, "kid": "unpinned"},
    )
    del unpinned.public_jwk["alg"]
    minter.keys.append(unpinned)

    rs512 = unpinned.sign(minter.claims(), algorithm="RS512")
    assert (await verifier.verify_access_token(rs512)).sub == "auth0|user-1"
    pinned = minter.current.sign(minter.claims(), algorithm="RS512")
    assert await rejected(verifier, pinned) == "signing key does not match algorithm"


# --- The verified-token cache -------------------------------------------------------------


async def test_cached_token_is_rejected_once_expired(
    minter: TokenMinter, verifier: TokenVerifier, clock: FakeClock, jwks: respx.Route
) -> None:
    token = minter.mint(exp=int(clock.wall) + 120)
    await verifier.verify_access_token(token)
    assert verifier.cached_tokens == 1

    clock.advance(100)  # inside exp - leeway .. exp + leeway: verified afresh, still good
    assert (await verifier.verify_access_token(token)).sub == "auth0|user-1"
    clock.advance(60)  # past exp + leeway
    assert await rejected(verifier, token) == "token expired"
    assert await rejected(verifier, token) == "token expired"


async def test_warm_verifications_do_not_refetch_keys(
    minter: TokenMinter, verifier: TokenVerifier, jwks: respx.Route
) -> None:
    tokens = [minter.mint(f"auth0|user-{n}") for n in range(5)]
    for _ in range(20):
        for n, token in enumerate(tokens):
            assert (await verifier.verify_access_token(token)).sub == f"auth0|user-{n}"
    assert jwks.call_count == 1
    assert verifier.cached_tokens == 5


async def test_cache_is_bounded_and_can_be_disabled(
    minter: TokenMinter, make_verifier: Callable[..., TokenVerifier], jwks: respx.Route
) -> None:
    small = make_verifier(token_cache_size=2)
    off = make_verifier(token_cache_size=0)
    for n in range(5):
        token = minter.mint(f"auth0|user-{n}")
        assert (await small.verify_access_token(token)).sub == f"auth0|user-{n}"
        assert (await off.verify_access_token(token)).sub == f"auth0|user-{n}"
    assert small.cached_tokens == 2
    assert off.cached_tokens == 0


async def test_revocation_check_applies_to_fresh_and_cached_tokens(
    minter: TokenMinter, verifier: TokenVerifier, jwks: respx.Route
) -> None:
    revoked: set[str] = set()
    verifier.revocation_check = lambda principal: principal.jti in revoked
    first, second = minter.mint(jti="jti-1"), minter.mint(jti="jti-2")
    await verifier.verify_access_token(first)

    revoked.update({"jti-1", "jti-2"})
    assert await rejected(verifier, first) == "token revoked"  # was cached
    assert await rejected(verifier, second) == "token revoked"  # never seen
    revoked.clear()
    assert (await verifier.verify_access_token(second)).jti == "jti-2"


# --- The JWKS cache -----------------------------------------------------------------------


async def test_jwks_is_fetched_lazily_with_explicit_timeouts(
    minter: TokenMinter, make_verifier: Callable[..., TokenVerifier], jwks: respx.Route
) -> None:
    verifier = make_verifier(auth0_timeout_seconds=2.5)
    assert jwks.call_count == 0

    await verifier.verify_access_token(minter.mint())

    assert jwks.call_count == 1 and verifier.jwks_fetch_count == 1
    assert jwks.calls.last.request.extensions["timeout"] == {
        "connect": 2.5,
        "read": 2.5,
        "write": 2.5,
        "pool": 2.5,
    }


async def test_concurrent_cold_start_shares_one_fetch(
    minter: TokenMinter, verifier: TokenVerifier, jwks: respx.Route
) -> None:
    async def slow_jwks(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        return httpx.Response(200, json=minter.jwks())

    jwks.side_effect = slow_jwks
    tokens = [minter.mint(f"auth0|user-{n}") for n in range(5)] * 10

    found = await asyncio.gather(*(verifier.verify_access_token(t) for t in tokens))

    assert [p.sub for p in found] == [f"auth0|user-{n}" for n in range(5)] * 10
    assert jwks.call_count == 1


async def test_key_rotation_without_restart(
    minter: TokenMinter, verifier: TokenVerifier, clock: FakeClock, jwks: respx.Route
) -> None:
    old_token = minter.mint()
    await verifier.verify_access_token(old_token)
    old_key = minter.current
    clock.advance(31)  # past the cooldown, well inside the TTL

    minter.rotate()
    new_token = minter.mint()
    assert (await verifier.verify_access_token(new_token)).sub == "auth0|user-1"
    assert jwks.call_count == 2  # the unknown kid caused one refetch
    assert (await verifier.verify_access_token(old_token)).sub == "auth0|user-1"

    minter.revoke(old_key.kid)
    clock.advance(601)  # the TTL ends; the next use refreshes and sees the key gone
    assert await rejected(verifier, old_token) == "unknown signing key"
    assert (await verifier.verify_access_token(new_token)).sub == "auth0|user-1"


async def test_key_removed_after_caching_stops_verifying_on_unknown_kid_refresh(
    minter: TokenMinter, verifier: TokenVerifier, clock: FakeClock, jwks: respx.Route
) -> None:
    cached = minter.mint()
    await verifier.verify_access_token(cached)
    assert verifier.cached_tokens == 1
    old_kid = minter.current.kid
    minter.rotate()
    minter.revoke(old_kid)
    clock.advance(31)

    # A token with the new kid refreshes the keys; the cached token's key is gone.
    await verifier.verify_access_token(minter.mint("auth0|bob"))
    assert verifier.cached_tokens == 1
    assert await rejected(verifier, cached) == "unknown signing key"
    assert await rejected(verifier, cached) == "unknown signing key"


async def test_a_key_published_after_the_last_fetch_verifies_at_once(
    minter: TokenMinter, verifier: TokenVerifier, clock: FakeClock, jwks: respx.Route
) -> None:
    """Two rotations close together, or a tenant that does not publish keys ahead: the
    first token of the new key refetches even inside the cooldown (no 401 for a real key)."""
    old_token = minter.mint()
    await verifier.verify_access_token(old_token)
    clock.advance(5)  # well inside the cooldown
    minter.rotate()
    assert (await verifier.verify_access_token(minter.mint("auth0|new"))).sub == "auth0|new"
    clock.advance(5)
    minter.rotate()
    assert (await verifier.verify_access_token(minter.mint("auth0|newer"))).sub == "auth0|newer"
    assert (await verifier.verify_access_token(old_token)).sub == "auth0|user-1"
    assert jwks.call_count == 3


async def test_flood_of_random_kids_makes_few_requests_per_cooldown(
    minter: TokenMinter, verifier: TokenVerifier, clock: FakeClock, jwks: respx.Route
) -> None:
    good = minter.mint()
    await verifier.verify_access_token(good)

    def flood() -> list[str]:
        claims = minter.claims()
        return [forge(_header(minter, kid=uuid.uuid4().hex), claims) for _ in range(1000)]

    for window in (1, 2, 3):
        results = await asyncio.gather(
            *(verifier.verify_access_token(t) for t in flood()), return_exceptions=True
        )
        for token in flood():  # and the same again, one after another
            assert await rejected(verifier, token) == "unknown signing key"
        assert all(isinstance(r, Unauthorized) for r in results)
        assert {r.detail for r in results if isinstance(r, Unauthorized)} == {"unknown signing key"}
        # 2,000 made-up kids in a window: no more fetches than the allowance.
        assert jwks.call_count == window * FETCHES_PER_COOLDOWN
        assert (await verifier.verify_access_token(good)).sub == "auth0|user-1"
        clock.advance(31)


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.Response(500, text="oops"),
        httpx.Response(200, text="<html>maintenance</html>"),
        httpx.Response(200, json={"keys": []}),
        httpx.Response(200, json={"keys": "all of them"}),
        httpx.Response(200, json=[1, 2, 3]),
    ],
    ids=["refused", "timeout", "500", "html", "empty", "keys-not-list", "json-list"],
)
async def test_tenant_down_keeps_known_keys(
    failure: Exception | httpx.Response,
    minter: TokenMinter,
    verifier: TokenVerifier,
    clock: FakeClock,
    jwks: respx.Route,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await verifier.verify_access_token(minter.mint())
    jwks.side_effect = failure if isinstance(failure, Exception) else None
    jwks.return_value = failure if isinstance(failure, httpx.Response) else None
    clock.advance(601)  # the keys are stale; the refresh fails
    caplog.set_level(logging.DEBUG)

    token = minter.mint("auth0|carol")
    first = await verifier.verify_access_token(token)
    assert first.sub == "auth0|carol"
    assert jwks.call_count == 2
    # Known keys are trusted for another cooldown, so cached tokens stay on the fast path.
    assert await verifier.verify_access_token(token) is first
    assert "JWKS fetch" in caplog.text and "keeping 1 known key" in caplog.text
    assert token not in caplog.text
    # The failure does not make every request knock on the tenant's door.
    await verifier.verify_access_token(minter.mint("auth0|dave"))
    assert jwks.call_count == 2


async def test_no_keys_and_tenant_down_is_503_with_retry_after(
    minter: TokenMinter, verifier: TokenVerifier, clock: FakeClock, jwks: respx.Route
) -> None:
    jwks.side_effect = httpx.ConnectError("connection refused")
    token = minter.mint()

    for _ in range(5):
        with pytest.raises(UpstreamUnavailable) as caught:
            await verifier.verify_access_token(token)
        assert caught.value.status == 503
        assert 1 <= int(caught.value.headers["Retry-After"]) <= 30
    assert not await verifier.ready()
    assert jwks.call_count == FETCHES_PER_COOLDOWN  # then it waits out the cooldown

    clock.advance(31)
    jwks.side_effect = lambda request: httpx.Response(200, json=minter.jwks())
    assert await verifier.ready()
    assert (await verifier.verify_access_token(token)).sub == "auth0|user-1"
    assert jwks.call_count == FETCHES_PER_COOLDOWN + 1


async def test_flood_while_no_keys_makes_one_request(
    minter: TokenMinter, verifier: TokenVerifier, jwks: respx.Route
) -> None:
    jwks.side_effect = httpx.ConnectError("connection refused")
    token = minter.mint()
    results = await asyncio.gather(
        *(verifier.verify_access_token(token) for _ in range(100)),
        return_exceptions=True,
    )
    assert all(isinstance(r, UpstreamUnavailable) for r in results)
    assert jwks.call_count == 1


@pytest.mark.parametrize(
    ("cache_control", "refetched_after"),
    [("max-age=60", 61), ("public, max-age=3600", 601), (None, 601), ("no-store", 31)],
)
async def test_jwks_ttl_follows_cache_control_capped_by_settings(
    cache_control: str | None,
    refetched_after: float,
    minter: TokenMinter,
    verifier: TokenVerifier,
    clock: FakeClock,
    jwks: respx.Route,
) -> None:
    headers = {"Cache-Control": cache_control} if cache_control else {}
    jwks.side_effect = lambda request: httpx.Response(200, json=minter.jwks(), headers=headers)
    await verifier.verify_access_token(minter.mint())

    clock.advance(refetched_after - 2)
    await verifier.verify_access_token(minter.mint("auth0|erin"))
    assert jwks.call_count == 1
    clock.advance(2)
    await verifier.verify_access_token(minter.mint("auth0|frank"))
    assert jwks.call_count == 2


async def test_unusable_keys_in_the_jwks_are_ignored(
    minter: TokenMinter, verifier: TokenVerifier, keys: list[SigningKey], jwks: respx.Route
) -> None:
    weak = SigningKey.generate(kid="weak", bits=1024)
    encryption = {**keys[1].public_jwk, "kid": "enc", "use": "enc"}
    extra = [weak.public_jwk, encryption, {"kid": "junk", "kty": "RSA", "n": "??"}, "junk"]
    jwks.side_effect = lambda request: httpx.Response(
        200, json={"keys": [*minter.jwks()["keys"], *extra]}
    )

    assert (await verifier.verify_access_token(minter.mint())).sub == "auth0|user-1"
    assert await rejected(verifier, minter.mint(key=weak)) == "unknown signing key"
    enc_token = rs256(keys[1], _header(minter, kid="enc"), minter.claims())
    assert await rejected(verifier, enc_token) == "unknown signing key"


async def test_ready_loads_keys_without_a_token(verifier: TokenVerifier, jwks: respx.Route) -> None:
    assert await verifier.ready()
    assert await verifier.ready()
    assert jwks.call_count == 1


def test_principal_is_hashable_and_immutable() -> None:
    found = Principal(sub="auth0|x", permissions=frozenset({"a"}), exp=1)
    assert {found: 1}[Principal(sub="auth0|x", permissions=frozenset({"a"}), exp=1)] == 1


async def test_random_mutations_only_ever_raise_our_errors(
    minter: TokenMinter, verifier: TokenVerifier, jwks: respx.Route
) -> None:
    rng = random.Random(20240611)
    good = minter.mint()
    alphabet = string.ascii_letters + string.digits + '-_.=+/ \x00é{}[]"'
    for _ in range(3000):
        chars = list(good)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(chars))
            action = rng.random()
            if action < 0.5:
                chars[position] = rng.choice(alphabet)
            elif action < 0.75:
                chars.insert(position, rng.choice(alphabet))
            else:
                del chars[position : position + rng.randint(1, 40)]
        mutated = "".join(chars)
        try:
            found = await verifier.verify_access_token(mutated)
        except Unauthorized:
            continue
        # Base64 has slack in its last character; anything accepted must say what `good` says.
        assert found == await verifier.verify_access_token(good)


async def test_es256_keys_work_when_allowed(
    minter: TokenMinter, make_verifier: Callable[..., TokenVerifier], jwks: respx.Route
) -> None:
    private_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_jwk = {**jwk.construct(private_pem, "ES256").public_key().to_dict(), "kid": "ec-1"}
    jwks.side_effect = lambda request: httpx.Response(
        200, json={"keys": [*minter.jwks()["keys"], public_jwk]}
    )
    token = jwt.encode(minter.claims(), private_pem.decode(), "ES256", headers={"kid": "ec-1"})

    verifier = make_verifier(auth0_algorithms=["RS256", "ES256"])
    assert (await verifier.verify_access_token(token)).sub == "auth0|user-1"
    assert (await verifier.verify_access_token(minter.mint())).sub == "auth0|user-1"
    only_rsa = make_verifier()
    assert await rejected(only_rsa, token) == "algorithm not allowed"
