"""Access-token verification: the verified-token cache (expiry, bounds, revocation)."""

from __future__ import annotations

from collections.abc import Callable

import respx

from app.auth.tokens import TokenVerifier
from devkit.keys import TokenMinter
from tests.auth import tokens_support as support
from tests.auth.tokens_support import (
    FakeClock,
    rejected,
)

# pytest finds fixtures by name in the test module: bind the shared ones here.
keys = support.keys
minter = support.minter
jwks = support.jwks
clock = support.clock
http = support.http
make_verifier = support.make_verifier
verifier = support.verifier


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
