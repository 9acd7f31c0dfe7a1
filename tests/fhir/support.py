"""What the FHIR tests share: the callers, the checks that hold every response to the FHIR
R4B models (`fhir.resources`), and events written straight into the log at chosen times.

Not a test module; `conftest.py` registers it for pytest's assertion rewriting.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome

ORG, OTHER_ORG = "acme", "globex"
SCOPE = f"org:{ORG}"
AUDITOR, CLERK, OUTSIDER = "auth0|auditor", "auth0|clerk", "auth0|outsider"
CLERK_PERMISSIONS = ["read:patients", "create:patients"]
FHIR_JSON = "application/fhir+json"
SEARCH = "/fhir/AuditEvent"
PATIENT = {"given_name": "Ada", "family_name": "Lovelace", "birth_date": "1990-12-10"}

Callers = dict[str, dict[str, str]]


def window(days: float = 1) -> list[tuple[str, str]]:
    """`date` bounds from `days` ago to `days` ahead (UTC)."""
    now = datetime.now(UTC)
    since, until = now - timedelta(days=days), now + timedelta(days=days)
    return [("date", "ge" + _text(since)), ("date", "lt" + _text(until))]


def _text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def assert_fhir(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == FHIR_JSON
    body: dict[str, Any] = response.json()
    return body


def assert_bundle(response: httpx.Response) -> dict[str, Any]:
    """A searchset Bundle whose every entry is a valid AuditEvent; its body."""
    body = assert_fhir(response)
    bundle = Bundle.model_validate(body)
    assert bundle.type == "searchset"
    assert [link.relation for link in bundle.link or []][:1] == ["self"]
    for entry in body.get("entry", []):
        AuditEvent.model_validate(entry["resource"])
        assert entry["fullUrl"].endswith(f"/fhir/AuditEvent/{entry['resource']['id']}")
    return body


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle.get("entry", [])]


def next_link(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


def assert_outcome(response: httpx.Response, status: int, *params: str) -> dict[str, Any]:
    """An error as a valid OperationOutcome and nothing else; `params`: exactly the
    parameters its issues name."""
    body = assert_fhir(response, status)
    assert set(body) == {"resourceType", "issue"}, body
    OperationOutcome.model_validate(body)
    if params:
        named = {name for issue in body["issue"] for name in issue.get("expression", [])}
        assert named == set(params), body
    return body


def patient_refs(resource: dict[str, Any]) -> list[str]:
    return [
        entity["what"]["reference"]
        for entity in resource.get("entity", [])
        if "reference" in entity.get("what", {})
    ]


def action_code(resource: dict[str, Any]) -> str:
    """The service's own action code among the subtypes (`patient.read`)."""
    return next(c["code"] for c in resource["subtype"] if c["system"].endswith("/audit-action"))


async def event_count(owner: asyncpg.Connection) -> int:
    count: int = await owner.fetchval("SELECT count(*) FROM audit_events")
    return count


async def seed_day(
    owner: asyncpg.Connection, scope: str, day: datetime, count: int, *, every: int, shown: int
) -> list[str]:
    """`count` events spread over the UTC `day` (two at a time share a recorded_at), every
    `every`-th a search that showed `shown` patients, the others reads of one patient;
    written as the owner with links (hashes not chained: for reading, not verifying).
    Returns the resource ids they map to, newest first."""
    step = timedelta(days=1) / (count // 2 + 1)
    rows = []
    for i in range(count):
        search = i % every == 0
        patient = None if search else uuid.uuid4()
        ids = [str(uuid.uuid4()) for _ in range(shown)] if search else None
        detail = {"filters": ["name"], "patient_ids": ids} if search else {"via": "get"}
        rows.append(
            (
                scope,
                f"auth0|user-{i % 5}",
                "patient.searched" if search else "patient.read",
                "E" if search else "R",
                str(patient) if patient else None,
                patient,
                f"req-{i}",
                orjson.dumps(detail).decode(),
                hashlib.sha256(str(i).encode()).digest(),
                day + (i // 2) * step,
            )
        )
    await owner.executemany(
        """
        INSERT INTO audit_events (scope, actor, client_id, source_ip, user_agent, action, crud,
            outcome, entity_type, entity_id, patient_id, request_id, detail, hash, recorded_at,
            occurred_at)
        VALUES ($1, $2, 'spa', '203.0.113.7', 'pytest', $3, $4, 'success', 'Patient', $5, $6,
            $7, $8::jsonb, $9, $10, $10)
        """,
        rows,
    )
    await owner.execute(
        """
        INSERT INTO audit_event_patients (seq, recorded_at, patient_ids)
        SELECT seq, recorded_at, ARRAY(SELECT audit_event_patient_ids(patient_id, detail))
        FROM audit_events WHERE scope = $1 AND request_id LIKE 'req-%'
        """,
        scope,
    )
    stored = await owner.fetch(
        "SELECT seq, patient_id, detail::text AS detail FROM audit_events"
        " WHERE scope = $1 AND request_id LIKE 'req-%' ORDER BY recorded_at DESC, seq DESC",
        scope,
    )
    expected = []
    for row in stored:
        shown_ids = orjson.loads(row["detail"]).get("patient_ids") or [str(row["patient_id"])]
        expected += [f"{row['seq']}-{patient}" for patient in shown_ids]
    return expected
