"""GET /api/audit-events/verify over HTTP: a scope's chain checked, and the edited row named."""

from __future__ import annotations

import asyncpg
import httpx

from app.audit.events import Event
from tests.audit.support import ACME, GLOBEX, actions, seed, window
from tests.helpers import assert_problem


class TestVerifyAuditEvents:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get("/api/audit-events/verify", params=window()), 401)

    async def test_missing_permission(
        self, client: httpx.AsyncClient, unprivileged: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        response = await client.get(
            "/api/audit-events/verify", params=window(), headers=unprivileged
        )
        assert_problem(response, 403)
        assert await actions(owner) == ["access.denied"]

    async def test_ok(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        for _ in range(4):
            await seed(writer, ACME, Event("patient.read", "R"))
        response = await client.get("/api/audit-events/verify", params=window(), headers=acme)
        assert response.status_code == 200
        body = response.json()
        assert (body["status"], body["count"]) == ("intact", 4)
        assert body["broken_seq"] is None
        assert (await actions(owner))[-1] == "audit.verified"

    async def test_finds_a_row_the_owner_edited(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        globex: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        for _ in range(4):
            await seed(writer, ACME, Event("patient.read", "R"))
            await seed(writer, GLOBEX, Event("patient.read", "R"))
        target = await owner.fetchrow(
            "SELECT seq, id, tableoid::regclass::text AS part FROM audit_events "
            "WHERE scope = $1 ORDER BY seq OFFSET 2 LIMIT 1",
            ACME,
        )
        # Only the owner can do this, and only with the trigger off on the row's partition.
        await owner.execute(f"ALTER TABLE {target['part']} DISABLE TRIGGER USER")
        await owner.execute(
            "UPDATE audit_events SET outcome = 'denied' WHERE seq = $1", target["seq"]
        )
        await owner.execute(f"ALTER TABLE {target['part']} ENABLE TRIGGER USER")
        body = (await client.get("/api/audit-events/verify", params=window(), headers=acme)).json()
        assert (body["status"], body["count"]) == ("broken", 2)
        assert (body["broken_seq"], body["broken_id"]) == (target["seq"], str(target["id"]))
        assert "contents" in body["reason"]
        other = (
            await client.get("/api/audit-events/verify", params=window(), headers=globex)
        ).json()
        assert (other["status"], other["count"]) == ("intact", 4)

    async def test_window_over_31_days(
        self, client: httpx.AsyncClient, acme: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        params = {"since": "2024-01-01T00:00:00Z", "until": "2024-03-01T00:00:00Z"}
        response = await client.get("/api/audit-events/verify", params=params, headers=acme)
        assert_problem(response, 422, "until")
        assert await actions(owner) == []
