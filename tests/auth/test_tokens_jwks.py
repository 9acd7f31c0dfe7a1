"""Access-token verification: the JWKS cache (lazy fetch, rotation, cooldowns, tenant down)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import httpx
import pytest
import respx

from app.auth.tokens import FETCHES_PER_COOLDOWN, TokenVerifier
from app.core.errors import Unauthorized, UpstreamUnavailable
from devkit.keys import SigningKey, TokenMinter
from tests.auth import tokens_support as support
from tests.auth.tokens_support import (
    FakeClock,
    _header,
    forge,
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
