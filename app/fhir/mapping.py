"""Audit events as FHIR R4 `AuditEvent` resources, after IHE Basic Audit Log Patterns (BALP).

docs/audit.md has the table. The rules that shape the ids:

- One resource per patient per event. An event that named patients (its `patient_id`, the
  ids in `detail.patient_ids` of a search or a page) becomes one resource for each, with the
  id `{seq}-{patient id}`; an event that named none becomes one resource, with the id
  `{seq}`. The seq is the event's key in its scope (indexed; the uuid is not), and the
  stored event never changes, so an id names the same resource on every call.
- With a patient filter only that patient's resource of each event is shown: a search that
  showed 20 patients is one disclosure to each of them.
- Names and codes only, as in the log: a search's entity lists the names of its filters,
  never their values.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_AGENT_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
# The service's own action codes (`patient.read`), beside the standard subtype.
ACTION_SYSTEM = "https://auth0-bff.dev/fhir/CodeSystem/audit-action"
OBSERVER_NAME = "auth0-bff"

OUTCOME_CODES = {"success": "0", "denied": "4", "failed": "8"}

_REST = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
_AUTHENTICATION = {"system": DICOM, "code": "110114", "display": "User Authentication"}
_LOGIN = {"system": DICOM, "code": "110122", "display": "Login"}
_LOGOUT = {"system": DICOM, "code": "110123", "display": "Logout"}
_SIGN_INS = frozenset(
    {
        "user.signed_in",
        "idp.login.success",
        "idp.login.failed",
        "idp.login.blocked",
        "idp.login.breached_password",
        "idp.silent_auth.success",
        "idp.silent_auth.failed",
    }
)
_SIGN_OUTS = frozenset({"user.signed_out", "idp.logout.success", "idp.logout.failed"})
# Reads of many records at once: BALP's query pattern.
_SEARCHES = frozenset({"patient.searched", "audit.read", "audit.exported"})
_INTERACTIONS = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "operation"}

_PERSON = {"system": ENTITY_TYPE, "code": "1", "display": "Person"}
_SYSTEM_OBJECT = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
_PATIENT_ROLE = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
_QUERY_ROLE = {"system": OBJECT_ROLE, "code": "24", "display": "Query"}
_USER_ROLE = {"system": OBJECT_ROLE, "code": "11", "display": "Security User Entity"}
_RESOURCE_ROLE = {"system": OBJECT_ROLE, "code": "13", "display": "Security Resource"}
_REQUEST_ID = {
    "system": BALP_ENTITY_TYPE,
    "code": "XrequestId",
    "display": "transport specific unique identifier where http X-Request-Id is used",
}
_USER_AGENT_TYPE = {
    "coding": [{"system": BALP_AGENT_TYPE, "code": "UserOauthAgent", "display": "User OAuth Agent"}]
}
_CLIENT_AGENT_TYPE = {"coding": [{"system": DICOM, "code": "110153", "display": "Source Role ID"}]}
_APPLICATION_SERVER = {"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_RESOURCE_ID = re.compile(rf"(?P<seq>[1-9]\d{{0,17}})(?:-(?P<patient>{_UUID}))?")


@dataclass(frozen=True, slots=True)
class ResourceId:
    """A resource id taken apart: its event's seq, and the patient it is about (if any)."""

    seq: int
    patient_id: uuid.UUID | None

    @classmethod
    def parse(cls, text: str) -> ResourceId | None:
        match = _RESOURCE_ID.fullmatch(text)
        if match is None:
            return None
        patient = match["patient"]
        return cls(int(match["seq"]), uuid.UUID(patient) if patient else None)

    def __str__(self) -> str:
        return f"{self.seq}-{self.patient_id}" if self.patient_id else str(self.seq)


def instant(value: datetime) -> str:
    """A FHIR `instant`: UTC, to the microsecond."""
    text = value.astimezone(UTC).isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z"


def patients_named(row: Mapping[str, Any], detail: Mapping[str, Any]) -> list[str]:
    """The ids of the patients an event named, once each, in order: its `patient_id`, then
    `detail.patient_ids` (the set `audit_event_patient_ids` links, migrations/0008, which
    also proved them uuids when the event was written)."""
    named: dict[str, None] = {}
    if row["patient_id"] is not None:
        named[str(row["patient_id"])] = None
    shown = detail.get("patient_ids")
    if isinstance(shown, list):
        named.update((str(text).lower(), None) for text in shown)
    return list(named)


class AuditEventMapper:
    """Maps stored audit events to `AuditEvent` resources for one deployment: users and
    clients are named by the tenant's issuer, the observer by the API's audience."""

    def __init__(self, issuer: str, audience: str) -> None:
        self.issuer = issuer
        self.source = {
            "observer": {"identifier": {"value": audience}, "display": OBSERVER_NAME},
            "type": [_APPLICATION_SERVER],
        }

    def resources(
        self, row: asyncpg.Record, only_patient: uuid.UUID | None = None
    ) -> Iterator[dict[str, Any]]:
        """The event's resources, in a stable order; with `only_patient`, only the one
        about that patient (none if the event did not name it)."""
        detail = orjson.loads(row["detail"])
        base = self._base(row, detail)
        named = patients_named(row, detail)
        if not named:
            if only_patient is None:
                yield {"resourceType": "AuditEvent", "id": str(row["seq"]), **base}
            return
        entities = base.pop("entity")
        only = str(only_patient) if only_patient is not None else None
        for patient in named:
            if only is not None and patient != only:
                continue
            yield {
                "resourceType": "AuditEvent",
                "id": f"{row['seq']}-{patient}",
                **base,
                "entity": [_patient_entity(patient), *entities],
            }

    def _base(self, row: asyncpg.Record, detail: Mapping[str, Any]) -> dict[str, Any]:
        """What every resource of one event shares."""
        action: str = row["action"]
        kind, interaction = _kind(action, row["crud"], detail)
        resource: dict[str, Any] = {
            "type": kind,
            "subtype": [interaction, {"system": ACTION_SYSTEM, "code": action}],
            "action": row["crud"],
            "recorded": instant(row["recorded_at"]),
            "outcome": OUTCOME_CODES[row["outcome"]],
        }
        if row["outcome_reason"]:
            resource["outcomeDesc"] = row["outcome_reason"]
        resource["agent"] = self._agents(row)
        resource["source"] = self.source
        resource["entity"] = self._entities(row, detail, interaction["code"] == "search-type")
        return resource

    def _agents(self, row: asyncpg.Record) -> list[dict[str, Any]]:
        user: dict[str, Any] = {}
        if row["actor"] is not None:
            user["type"] = _USER_AGENT_TYPE
            user["who"] = {"identifier": {"system": self.issuer, "value": row["actor"]}}
        else:
            user["name"] = "anonymous"
        user["requestor"] = True
        if row["token_id"]:
            user["policy"] = [row["token_id"]]  # BALP: the access token's jti
        if row["source_ip"] is not None:
            user["network"] = {"address": str(row["source_ip"]), "type": "2"}  # IP address
        agents = [user]
        if row["client_id"]:
            client = {"identifier": {"system": self.issuer, "value": row["client_id"]}}
            agents.append({"type": _CLIENT_AGENT_TYPE, "who": client, "requestor": False})
        return agents

    def _entities(
        self, row: asyncpg.Record, detail: Mapping[str, Any], search: bool
    ) -> list[dict[str, Any]]:
        entities: list[dict[str, Any]] = []
        if search:
            query: dict[str, Any] = {"type": _SYSTEM_OBJECT, "role": _QUERY_ROLE}
            filters = detail.get("filters")
            if isinstance(filters, list) and filters:
                query["detail"] = [{"type": "filter", "valueString": str(f)} for f in filters]
            entities.append(query)
        kind, entity_id = row["entity_type"], row["entity_id"]
        if entity_id and kind != "Patient":
            if kind == "user":
                what = {"identifier": {"system": self.issuer, "value": entity_id}}
                entities.append({"what": what, "type": _PERSON, "role": _USER_ROLE})
            else:
                entity = {"what": {"identifier": {"value": entity_id}}, "type": _SYSTEM_OBJECT}
                if kind == "route":
                    entity["role"] = _RESOURCE_ROLE
                if kind:
                    entity["description"] = kind
                entities.append(entity)
        if row["request_id"]:
            what = {"identifier": {"value": row["request_id"]}}
            entities.append({"what": what, "type": _REQUEST_ID})
        return entities


def _patient_entity(patient: str) -> dict[str, Any]:
    return {"what": {"reference": f"Patient/{patient}"}, "type": _PERSON, "role": _PATIENT_ROLE}


def _kind(
    action: str, crud: str, detail: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, str]]:
    """The event's `type` and its first `subtype`: a sign-in or sign-out is BALP's
    User Authentication (Login, Logout); anything else a RESTful interaction."""
    if action in _SIGN_INS:
        return _AUTHENTICATION, _LOGIN
    if action in _SIGN_OUTS:
        return _AUTHENTICATION, _LOGOUT
    if action in _SEARCHES or (crud == "R" and "patient_ids" in detail):
        code = "search-type"
    else:
        code = _INTERACTIONS[crud]
    return _REST, {"system": RESTFUL_INTERACTION, "code": code, "display": code}
