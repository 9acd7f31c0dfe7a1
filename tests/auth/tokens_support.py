"""Shared helpers and fixtures for the access-token verification tests (tests/auth/test_tokens_*).

Tokens are minted with keys generated here and served through a respx-stubbed JWKS. Time is
a fake clock handed to the verifier, so TTLs, cooldowns and expiry are exercised without
sleeping. A test module imports the fixtures it needs by name; `keys` is module-scoped, so each
importing module generates its keys once.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import respx
from jose import jwk

from app.auth.tokens import TokenVerifier
from app.core.errors import Unauthorized
from app.core.settings import Settings
from devkit.keys import SigningKey, TokenMinter

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
        "app_secret_key": "0123456789abcdef0123456789abcdef-test",
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


def _header(minter: TokenMinter, **changes: Any) -> dict[str, Any]:
    header = {"alg": "RS256", "typ": "JWT", "kid": minter.current.kid, **changes}
    return {k: v for k, v in header.items() if v is not None}
