"""A cookie request reads its session from the process's cache, not from Postgres, while
nothing changed: what keeps a cookie read as cheap as a bearer read."""

from __future__ import annotations

import httpx
import pytest

from app.session import repository
from tests.session.support import login, with_cookie


async def test_repeated_requests_read_the_session_row_once(
    app: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    cookie = await login(app)
    reads = 0
    select = repository.select_session

    async def counted(*args: object) -> object:
        nonlocal reads
        reads += 1
        return await select(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(repository, "select_session", counted)
    for _ in range(5):
        assert (await app.get("/api/patients", headers=with_cookie(cookie))).status_code == 200
    assert reads == 1
