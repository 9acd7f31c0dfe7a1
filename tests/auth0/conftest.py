"""The Auth0 client tests' fixtures: fake time, an HTTP client, the stubbed tenant and its
token endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx

from tests.auth0.support import BASE, FakeTime


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def token_route(mock: respx.MockRouter) -> respx.Route:
    return mock.post("/oauth/token").respond(
        json={"access_token": "m2m-1", "expires_in": 86400, "token_type": "Bearer"}
    )
