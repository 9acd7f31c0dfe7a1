"""What an API client sees when the Management API call behind `GET /api/profile` (made with
auth0-python) fails: our problem+json, never Auth0's words.

The app runs in-process with its lifespan; Auth0 is stubbed at the transport with `respx`.
Retries are off here (a zero wait budget) and the breaker opens after two failures, so each
failure is one request.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import respx

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem, bearer

USER = "auth0|user-1"
USER_PATH = r"^/api/v2/users/auth0(%7C|\|)user-1$"
NO_SUCH_USER = {
    "statusCode": 404,
    "error": "Not Found",
    "message": "The user does not exist.",
    "errorCode": "inexistent_user",
}


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(database, auth0_retry_budget_seconds=0, auth0_breaker_failures=2)


async def test_an_unknown_user_is_a_404_problem(
    client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
) -> None:
    users = tenant.get(path__regex=USER_PATH).respond(404, json=NO_SUCH_USER)

    response = await client.get("/api/profile", headers=bearer(mint(USER)))

    assert_problem(response, 404, hides=["does not exist", "inexistent_user"])
    assert users.call_count == 1


async def test_auth0_failing_is_a_503_problem_with_retry_after(
    client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
) -> None:
    tenant.get(path__regex=USER_PATH).respond(500, json={"message": "internal detail"})

    response = await client.get("/api/profile", headers=bearer(mint(USER)))

    assert_problem(response, 503, hides=["internal detail"])
    assert int(response.headers["retry-after"]) >= 1


async def test_an_answer_the_sdk_cannot_read_is_a_502_problem(
    client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
) -> None:
    tenant.get(path__regex=USER_PATH).respond(200, json=["auth0-body-marker"])

    response = await client.get("/api/profile", headers=bearer(mint(USER)))

    assert_problem(response, 502, hides=["auth0-body-marker"])


async def test_an_open_breaker_is_a_503_problem_without_a_request(
    client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
) -> None:
    users = tenant.get(path__regex=USER_PATH).mock(side_effect=httpx.ConnectError("down"))
    headers = bearer(mint(USER))
    for _ in range(2):
        assert_problem(await client.get("/api/profile", headers=headers), 503)

    response = await client.get("/api/profile", headers=headers)

    assert_problem(response, 503)
    assert int(response.headers["retry-after"]) >= 1
    assert users.call_count == 2
