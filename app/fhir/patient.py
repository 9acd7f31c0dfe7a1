"""A stored patient as a FHIR R4 `Patient` resource, so the `Patient/{id}` references of
audit events resolve for a FHIR client."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from app.fhir.mapping import instant


def patient_resource(row: asyncpg.Record) -> dict[str, Any]:
    """The live patient row as a `Patient`; `meta.versionId` is the API's version."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(row["id"]),
        "meta": {"versionId": str(row["version"]), "lastUpdated": instant(row["updated_at"])},
    }
    system, value = row["identifier_system"], row["identifier_value"]
    if system and value:
        resource["identifier"] = [_identifier(system, value)]
    resource["active"] = row["active"]
    resource["name"] = [
        {"use": "official", "family": row["family_name"], "given": [row["given_name"]]}
    ]
    telecom = [{"system": kind, "value": row[kind]} for kind in ("phone", "email") if row[kind]]
    if telecom:
        resource["telecom"] = telecom
    if row["gender"]:
        resource["gender"] = row["gender"]  # the same four codes as FHIR's AdministrativeGender
    resource["birthDate"] = row["birth_date"].isoformat()
    if row["address"]:
        resource["address"] = [_address(orjson.loads(row["address"]))]
    return resource


def _identifier(system: str, value: str) -> dict[str, Any]:
    """FHIR wants `system` to be a URI; a system name with spaces is kept as the assigner."""
    if any(char.isspace() for char in system):
        return {"value": value, "assigner": {"display": system}}
    return {"system": system, "value": value}


def _address(stored: dict[str, Any]) -> dict[str, Any]:
    names = {"line": "line", "city": "city", "postal_code": "postalCode", "country": "country"}
    return {fhir: stored[ours] for ours, fhir in names.items() if stored.get(ours)}
