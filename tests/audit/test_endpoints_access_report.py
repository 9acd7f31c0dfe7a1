"""GET /api/patients/{id}/access-report over HTTP: who saw a patient's record, in pages."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from app.audit.events import Event
from tests.audit.support import ACME, GLOBEX, actions, seed
from tests.helpers import assert_problem


class TestPatientAccessReport:
    def url(self, patient: uuid.UUID) -> str:
        return f"/api/patients/{patient}/access-report"

    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get(self.url(uuid.uuid4())), 401)

    async def test_missing_permission(
        self, client: httpx.AsyncClient, unprivileged: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        patient = uuid.uuid4()
        assert_problem(await client.get(self.url(patient), headers=unprivileged), 403)
        # The refused look at this patient's trail is itself about the patient.
        assert await owner.fetchval("SELECT patient_id FROM audit_events") == patient

    async def test_ok(
        self,
        client: httpx.AsyncClient,
        writer: asyncpg.Pool,
        acme: dict[str, str],
        owner: asyncpg.Connection,
    ) -> None:
        patient, other = uuid.uuid4(), uuid.uuid4()
        await seed(
            writer, ACME, Event("patient.created", "C", patient_id=patient), sub="auth0|nurse"
        )
        await seed(writer, ACME, Event("patient.read", "R", patient_id=other), sub="auth0|doc")
        await seed(writer, ACME, Event("patient.read", "R", patient_id=patient), sub="auth0|doc")
        await seed(
            writer,
            ACME,
            Event("patient.read", "R", outcome="denied", patient_id=patient),
            sub="auth0|x",
        )
        await seed(writer, GLOBEX, Event("patient.read", "R", patient_id=patient), sub="auth0|spy")
        response = await client.get(self.url(patient), headers=acme)
        assert response.status_code == 200
        body = response.json()
        assert [(i["actor"], i["action"], i["outcome"]) for i in body["items"]] == [
            ("auth0|nurse", "patient.created", "success"),
            ("auth0|doc", "patient.read", "success"),
            ("auth0|x", "patient.read", "denied"),
        ]
        assert body["next_cursor"] is None
        # Looking at the report is on the patient's record too.
        again = (await client.get(self.url(patient), headers=acme)).json()["items"]
        assert again[-1]["action"] == "audit.read" and again[-1]["actor"] == "auth0|admin-acme"

    async def test_pages_with_a_cursor_bound_to_the_patient(
        self, client: httpx.AsyncClient, writer: asyncpg.Pool, acme: dict[str, str]
    ) -> None:
        patient = uuid.uuid4()
        for i in range(5):
            await seed(
                writer, ACME, Event("patient.read", "R", patient_id=patient, entity_id=str(i))
            )
        first = (await client.get(self.url(patient), params={"limit": 3}, headers=acme)).json()
        assert [i["entity_id"] for i in first["items"]] == ["0", "1", "2"]
        params = {"limit": 3, "cursor": first["next_cursor"]}
        second = (await client.get(self.url(patient), params=params, headers=acme)).json()
        assert [i["entity_id"] for i in second["items"]] == ["3", "4", str(patient)]
        elsewhere = await client.get(self.url(uuid.uuid4()), params=params, headers=acme)
        assert_problem(elsewhere, 400, "cursor")

    async def test_not_a_uuid_is_404(
        self, client: httpx.AsyncClient, acme: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        assert_problem(await client.get("/api/patients/42/access-report", headers=acme), 404)
        assert await actions(owner) == []

    async def test_invalid_query(
        self, client: httpx.AsyncClient, acme: dict[str, str], owner: asyncpg.Connection
    ) -> None:
        response = await client.get(self.url(uuid.uuid4()), params={"limit": 500}, headers=acme)
        assert_problem(response, 422, "limit")
        assert await actions(owner) == []
