"""POST /api/patients when the database refuses writes, as a standby (or a primary being
demoted) does: SQLSTATE 25006, "cannot execute INSERT in a read-only transaction"."""

from __future__ import annotations

import asyncpg
import httpx

from app.core.db import asyncpg_dsn
from devkit.db import ProvisionedDatabase
from tests.core.test_db_hosts import read_only
from tests.helpers import assert_problem
from tests.patients.support import PATIENT, Tokens, count


async def test_a_write_refused_as_read_only_is_503_and_nothing_stored(
    client: httpx.AsyncClient,
    who: Tokens,
    database: ProvisionedDatabase,
) -> None:
    await read_only(database.admin_url, database.name, on=True)
    try:
        response = await client.post("/api/patients", json=PATIENT, headers=who["alice"])
        body = assert_problem(response, 503, title="Service Unavailable")
        assert body["detail"] == "the database is unavailable; try again shortly"
        assert response.headers["retry-after"] == "2"
    finally:
        await read_only(database.admin_url, database.name, on=False)
    fresh = await asyncpg.connect(asyncpg_dsn(database.owner_url))
    try:
        assert await count(fresh) == 0
        assert await fresh.fetchval("SELECT count(*) FROM audit_events") == 0
    finally:
        await fresh.close()
    # The refused connection was dropped, not handed out again: the next write goes through.
    again = await client.post("/api/patients", json=PATIENT, headers=who["alice"])
    assert again.status_code == 201, again.text
