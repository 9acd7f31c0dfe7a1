"""GET /api/audit-events/export?format=fhir-ndjson: the same resources as the search, one
per line, streamed."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import orjson
from fhir.resources.R4B.auditevent import AuditEvent

from tests.fhir.support import PATIENT, SEARCH, Callers, assert_bundle, resources, window
from tests.helpers import assert_problem

EXPORT = "/api/audit-events/export"


def _api_window() -> dict[str, str]:
    [(_, since), (_, until)] = window()
    return {"since": since.removeprefix("ge"), "until": until.removeprefix("lt")}


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+ndjson"
    assert 'filename="audit-events.fhir.ndjson"' in response.headers["content-disposition"]
    lines = [orjson.loads(line) for line in response.text.splitlines()]
    for line in lines:
        AuditEvent.model_validate(line)
    return lines


class TestExportFhirNdjson:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        params = {**_api_window(), "format": "fhir-ndjson"}
        assert_problem(await client.get(EXPORT, params=params), 401)

    async def test_ok(
        self, client: httpx.AsyncClient, who: Callers, owner: asyncpg.Connection
    ) -> None:
        for name in ("Ada", "Adb"):
            body = {**PATIENT, "given_name": name}
            created = await client.post("/api/patients", json=body, headers=who["auditor"])
            assert created.status_code == 201
        shown = await client.get("/api/patients", headers=who["auditor"])
        assert len(shown.json()["items"]) == 2
        params = {**_api_window(), "format": "fhir-ndjson"}

        lines = _lines(await client.get(EXPORT, params=params, headers=who["auditor"]))
        # Oldest first: two creations, the search as one resource per patient shown, and
        # the export itself (recorded before its first byte).
        codes = [line["subtype"][1]["code"] for line in lines]
        assert codes == [*["patient.created"] * 2, *["patient.searched"] * 2, "audit.exported"]
        search = assert_bundle(await client.get(SEARCH, params=window(), headers=who["auditor"]))
        assert sorted(map(orjson.dumps, lines)) == sorted(map(orjson.dumps, resources(search)))
        exported = await owner.fetchrow(
            "SELECT detail->>'format' AS format FROM audit_events WHERE action = 'audit.exported'"
        )
        assert exported["format"] == "fhir-ndjson"

    async def test_a_patient_filter_exports_that_patients_resources(
        self, client: httpx.AsyncClient, who: Callers
    ) -> None:
        ids = []
        for name in ("Ada", "Adb"):
            body = {**PATIENT, "given_name": name}
            response = await client.post("/api/patients", json=body, headers=who["auditor"])
            ids.append(response.json()["id"])
        await client.get("/api/patients", headers=who["auditor"])
        params = {**_api_window(), "format": "fhir-ndjson", "patient_id": ids[1]}
        lines = _lines(await client.get(EXPORT, params=params, headers=who["auditor"]))
        codes = [line["subtype"][1]["code"] for line in lines]
        assert codes == ["patient.created", "patient.searched", "audit.exported"]
        assert {line["id"].split("-", 1)[1] for line in lines} == {ids[1]}

    async def test_unknown_format(self, client: httpx.AsyncClient, who: Callers) -> None:
        params = {**_api_window(), "format": "fhir-xml"}
        response = await client.get(EXPORT, params=params, headers=who["auditor"])
        assert_problem(response, 422, "format")
