"""A window whose ends do not exist in UTC is a 422 naming the field, never a 500."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.helpers import assert_problem

OUT_OF_RANGE = "0001-01-01T00:00:00+05:00"  # before year 1 once in UTC


@pytest.mark.parametrize("path", ["/api/audit-events", "/api/audit-events/verify"])
@pytest.mark.parametrize("field", ["since", "until"])
async def test_an_end_outside_utc_is_422_and_nothing_is_recorded(
    client: httpx.AsyncClient,
    acme: dict[str, str],
    owner: asyncpg.Connection,
    path: str,
    field: str,
) -> None:
    params = {"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"}
    params[field] = OUT_OF_RANGE
    response = await client.get(path, params=params, headers=acme)
    assert_problem(response, 422, field)
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0
