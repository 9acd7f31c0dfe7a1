"""Access-token verification: accepted tokens, the Principal, and mutations of a good token."""

from __future__ import annotations

import random
import string
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk, jwt

from app.auth.tokens import Principal, TokenVerifier
from app.core.errors import Unauthorized
from devkit.keys import SigningKey, TokenMinter
from tests.auth import tokens_support as support
from tests.auth.tokens_support import (
    AUDIENCE,
    _header,
    rejected,
    rs256,
)

# pytest finds fixtures by name in the test module: bind the shared ones here.
keys = support.keys
minter = support.minter
jwks = support.jwks
clock = support.clock
http = support.http
make_verifier = support.make_verifier
verifier = support.verifier


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
