"""The stand-in tenant's fault switch and key rotation, which the fault runs rely on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from devkit.keys import SigningKey, TokenMinter
from devkit.tenant.app import create_tenant_app
from devkit.tenant.state import TenantState


@pytest.fixture
def state() -> TenantState:
    minter = TokenMinter("tenant.test.local", "https://api.test.local")
    minter.next_key = SigningKey.generate()
    return TenantState(minter, "cid", "secret")


@pytest.fixture
async def tenant(state: TenantState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_tenant_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://tenant") as client:
        yield client


async def test_no_fault_by_default(tenant: httpx.AsyncClient) -> None:
    assert (await tenant.get("/.well-known/jwks.json")).status_code == 200
    assert "faulted" not in (await tenant.get("/dev/stats")).json()


async def test_slow_delays_tenant_answers_but_not_dev_endpoints(
    tenant: httpx.AsyncClient,
) -> None:
    answer = await tenant.post("/dev/fault", json={"mode": "slow", "seconds": 0.3})
    assert answer.json() == {"mode": "slow", "seconds": 0.3, "retry_after": 1}
    started = time.monotonic()
    assert (await tenant.get("/.well-known/jwks.json")).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert (await tenant.get("/dev/stats")).json()["faulted"] == 1
    assert time.monotonic() - started < 0.3


async def test_429_carries_retry_after_and_clears(tenant: httpx.AsyncClient) -> None:
    await tenant.post("/dev/fault", json={"mode": "429", "retry_after": 7})
    answer = await tenant.get("/.well-known/jwks.json")
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "7"
    await tenant.post("/dev/fault", json={"mode": "none"})
    assert (await tenant.get("/.well-known/jwks.json")).status_code == 200


async def test_unknown_mode_is_refused(tenant: httpx.AsyncClient, state: TenantState) -> None:
    answer = await tenant.post("/dev/fault", json={"mode": "explode"})
    assert answer.status_code == 400
    assert state.fault.mode == "none"


async def test_rotation_signs_with_the_key_published_ahead(
    tenant: httpx.AsyncClient, state: TenantState
) -> None:
    before = {k["kid"] for k in (await tenant.get("/.well-known/jwks.json")).json()["keys"]}
    announced = state.minter.next_key
    assert announced is not None and announced.kid in before
    rotated = (await tenant.post("/dev/rotate")).json()
    assert rotated["kid"] == announced.kid
    assert before < set(rotated["published"])  # old keys stay, a new next key is added
    token = (await tenant.post("/dev/token", json={"sub": "auth0|a"})).json()["access_token"]
    assert state.minter.current.kid == announced.kid
    assert token.count(".") == 2


async def test_unannounced_rotation_signs_with_a_key_never_published(
    tenant: httpx.AsyncClient, state: TenantState
) -> None:
    before = {k["kid"] for k in (await tenant.get("/.well-known/jwks.json")).json()["keys"]}
    rotated = (await tenant.post("/dev/rotate", json={"announced": False})).json()
    assert rotated["kid"] not in before
