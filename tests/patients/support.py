"""What the patient endpoint tests share: the callers, a valid patient, and the helpers that
create patients and read back what was stored (each audit event checked for patient values).

Not a test module; `conftest.py` registers it for pytest's assertion rewriting.
"""

from __future__ import annotations

import copy
from typing import Any

import asyncpg
import httpx

ORG_A, ORG_B = "org_alpha", "org_beta"
ALICE, BOB, CAROL, DAVE, ERIN = (f"auth0|{n}" for n in ("alice", "bob", "carol", "dave", "erin"))

PATIENT: dict[str, Any] = {
    "given_name": "Élodie",
    "family_name": "Dupont-Łukasz",
    "birth_date": "1985-04-12",
    "gender": "female",
    "identifier": {"system": "urn:oid:1.2.3", "value": "MRN-0001"},
    "phone": "+33 1 23 45 67 89",
    "email": "elodie.dupont@example.com",
    "address": {
        "line": ["1 rue de Rivoli"],
        "city": "Paris",
        "postal_code": "75001",
        "country": "fr",
    },
}
# Fragments of patient values that must never appear in an audit event or an error.
SECRETS = ("Élodie", "Dupont", "MRN-0001", "elodie", "Rivoli", "Paris", "1985", "+33")

Tokens = dict[str, dict[str, str]]


def body(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(PATIENT)
    for name, value in changes.items():
        if value is ...:
            data.pop(name, None)
        else:
            data[name] = value
    return data


async def create(
    client: httpx.AsyncClient, headers: dict[str, str], **changes: Any
) -> dict[str, Any]:
    response = await client.post("/api/patients", json=body(**changes), headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def fields_of(problem: dict[str, Any]) -> set[str]:
    return {e["field"] for e in problem.get("errors", [])}


async def count(owner: asyncpg.Connection, table: str = "patients") -> int:
    value: int = await owner.fetchval(f"SELECT count(*) FROM {table}")
    return value


async def events(owner: asyncpg.Connection, action: str | None = None) -> list[asyncpg.Record]:
    rows = await owner.fetch(
        "SELECT action, crud, outcome, outcome_reason, scope, actor, patient_id, recorded_at,"
        " detail::text AS detail FROM audit_events"
        " WHERE $1::text IS NULL OR action = $1 ORDER BY seq",
        action,
    )
    for row in rows:
        for secret in SECRETS:
            assert secret not in row["detail"], (row["action"], secret)
    return rows


def version_tag(version: int) -> dict[str, str]:
    return {"If-Match": f'W/"{version}"'}
