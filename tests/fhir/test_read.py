"""GET /fhir/AuditEvent/{id}, GET /fhir/Patient/{id} and GET /fhir/metadata, and the
OperationOutcome every other /fhir error becomes."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import orjson
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.patient import Patient

from app.core.settings import Settings
from tests.fhir.support import (
    PATIENT,
    SEARCH,
    Callers,
    action_code,
    assert_bundle,
    assert_fhir,
    assert_outcome,
    patient_refs,
    resources,
    window,
)

FULL_PATIENT = {
    **PATIENT,
    "gender": "female",
    "identifier": {"system": "urn:oid:1.2.3", "value": "MRN-0001"},
    "phone": "+33 1 23 45 67 89",
    "email": "ada@example.com",
    "address": {"line": ["1 rue de Rivoli"], "city": "Paris", "postal_code": "75001"},
}


async def _create(client: httpx.AsyncClient, who: Callers, **changes: object) -> str:
    response = await client.post(
        "/api/patients", json={**FULL_PATIENT, **changes}, headers=who["auditor"]
    )
    assert response.status_code == 201, response.text
    patient_id: str = response.json()["id"]
    return patient_id


class TestReadAuditEvent:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert_outcome(await client.get(f"{SEARCH}/1"), 401)

    async def test_missing_permission(self, client: httpx.AsyncClient, who: Callers) -> None:
        assert_outcome(await client.get(f"{SEARCH}/1", headers=who["clerk"]), 403)

    async def test_ok(
        self, client: httpx.AsyncClient, who: Callers, owner: asyncpg.Connection
    ) -> None:
        patient_id = await _create(client, who)
        denied = await client.get(SEARCH, params=window(), headers=who["clerk"])
        assert denied.status_code == 403
        found = resources(
            assert_bundle(await client.get(SEARCH, params=window(), headers=who["auditor"]))
        )
        for resource in found:  # about a patient (`seq-id`), and about none (`seq`)
            response = await client.get(f"{SEARCH}/{resource['id']}", headers=who["auditor"])
            read = assert_fhir(response)
            AuditEvent.model_validate(read)
            assert read == resource
        assert {action_code(r) for r in found} == {"patient.created", "access.denied"}
        created = next(r for r in found if action_code(r) == "patient.created")
        assert patient_refs(created) == [f"Patient/{patient_id}"]
        reads = await owner.fetch(
            "SELECT entity_id, patient_id FROM audit_events WHERE entity_type = 'AuditEvent'"
        )
        assert sorted(r["entity_id"] for r in reads) == sorted(r["id"] for r in found)

    async def test_not_found(self, client: httpx.AsyncClient, who: Callers) -> None:
        patient_id = await _create(client, who)
        [created] = resources(
            assert_bundle(await client.get(SEARCH, params=window(), headers=who["auditor"]))
        )
        seq = created["id"].split("-", 1)[0]
        for wrong in (
            seq,  # the event named a patient: its resources are per patient
            f"{seq}-{uuid.uuid4()}",  # a patient it did not name
            f"{int(seq) + 1000}",
            "not-an-id",
            f"{seq}-{patient_id.upper()}",
        ):
            response = await client.get(f"{SEARCH}/{wrong}", headers=who["auditor"])
            assert_outcome(response, 404)
        # Another scope's event is not found either.
        response = await client.get(f"{SEARCH}/{created['id']}", headers=who["outsider"])
        assert_outcome(response, 404)


class TestReadPatient:
    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        assert_outcome(await client.get(f"/fhir/Patient/{uuid.uuid4()}"), 401)

    async def test_missing_permission(self, client: httpx.AsyncClient, who: Callers) -> None:
        response = await client.get(f"/fhir/Patient/{uuid.uuid4()}", headers=who["none"])
        assert_outcome(response, 403)

    async def test_ok(
        self, client: httpx.AsyncClient, who: Callers, owner: asyncpg.Connection
    ) -> None:
        patient_id = await _create(client, who)
        response = await client.get(f"/fhir/Patient/{patient_id}", headers=who["clerk"])
        body = assert_fhir(response)
        patient = Patient.model_validate(body)
        assert patient.id == patient_id
        assert body["name"] == [{"use": "official", "family": "Lovelace", "given": ["Ada"]}]
        assert body["birthDate"] == "1990-12-10"
        assert body["gender"] == "female"
        assert body["identifier"] == [{"system": "urn:oid:1.2.3", "value": "MRN-0001"}]
        assert {t["system"] for t in body["telecom"]} == {"phone", "email"}
        assert body["address"] == [
            {"line": ["1 rue de Rivoli"], "city": "Paris", "postalCode": "75001"}
        ]
        assert body["meta"]["versionId"] == "1"
        assert response.headers["etag"] == 'W/"1"'
        assert response.headers["cache-control"] == "no-store"
        read = await owner.fetchrow(
            "SELECT actor, outcome, patient_id, detail::text AS detail FROM audit_events"
            " WHERE action = 'patient.read'"
        )
        assert (read["actor"], read["outcome"], str(read["patient_id"])) == (
            "auth0|clerk",
            "success",
            patient_id,
        )
        # The reference in the patient's AuditEvent resolves to this resource.
        found = resources(
            assert_bundle(await client.get(SEARCH, params=window(), headers=who["auditor"]))
        )
        assert all(patient_refs(r) == [f"Patient/{patient_id}"] for r in found)

    async def test_minimal_patient(self, client: httpx.AsyncClient, who: Callers) -> None:
        response = await client.post("/api/patients", json=PATIENT, headers=who["auditor"])
        patient_id = response.json()["id"]
        body = assert_fhir(await client.get(f"/fhir/Patient/{patient_id}", headers=who["clerk"]))
        Patient.model_validate(body)
        assert {"telecom", "address", "identifier", "gender"}.isdisjoint(body)

    async def test_another_scope_is_not_found_and_recorded(
        self, client: httpx.AsyncClient, who: Callers, owner: asyncpg.Connection
    ) -> None:
        patient_id = await _create(client, who)
        response = await client.get(f"/fhir/Patient/{patient_id}", headers=who["outsider"])
        assert_outcome(response, 404)
        assert "Lovelace" not in response.text
        refused = await owner.fetchrow(
            "SELECT outcome, scope FROM audit_events WHERE action = 'patient.read'"
        )
        assert (refused["outcome"], refused["scope"]) == ("denied", "org:globex")

    async def test_deleted_is_gone(self, client: httpx.AsyncClient, who: Callers) -> None:
        patient_id = await _create(client, who)
        deleted = await client.delete(f"/api/patients/{patient_id}", headers=who["admin"])
        assert deleted.status_code == 204
        response = await client.get(f"/fhir/Patient/{patient_id}", headers=who["clerk"])
        assert assert_outcome(response, 410)["issue"][0]["code"] == "deleted"


class TestMetadata:
    async def test_ok_without_a_token(self, client: httpx.AsyncClient, settings: Settings) -> None:
        body = assert_fhir(await client.get("/fhir/metadata"))
        statement = CapabilityStatement.model_validate(body)
        assert statement.fhirVersion == "4.0.1"
        [rest] = body["rest"]
        kinds = {r["type"]: r for r in rest["resource"]}
        assert set(kinds) == {"AuditEvent", "Patient"}
        assert {i["code"] for i in kinds["AuditEvent"]["interaction"]} == {"read", "search-type"}
        assert {p["name"] for p in kinds["AuditEvent"]["searchParam"]} == {
            "date",
            "patient",
            "agent",
            "action",
            "outcome",
        }
        assert body["implementation"]["url"] == f"{settings.server.public_url}/fhir"

    async def test_the_host_header_never_names_the_base(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        forged = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
        body = assert_fhir(await client.get("/fhir/metadata", headers=forged))
        assert body["implementation"]["url"] == f"{settings.server.public_url}/fhir"
        assert "evil.example" not in orjson.dumps(body).decode()


class TestOutcomes:
    async def test_no_such_route(self, client: httpx.AsyncClient) -> None:
        assert_outcome(await client.get("/fhir/Observation"), 404)

    async def test_wrong_method(self, client: httpx.AsyncClient, who: Callers) -> None:
        response = await client.post(SEARCH, json={}, headers=who["auditor"])
        assert assert_outcome(response, 405)["issue"][0]["code"] == "not-supported"

    async def test_api_errors_stay_problems(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/audit-events")
        assert response.headers["content-type"] == "application/problem+json"
