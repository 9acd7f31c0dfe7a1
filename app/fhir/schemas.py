"""The FHIR resources as `/openapi.json` describes them: their outline, not all of FHIR.

The handlers build plain dicts (app/fhir/mapping.py, patient.py, capability.py); these
models document them, and the tests hold every response to the FHIR R4B models themselves
(`fhir.resources`). Names carry a `Fhir` prefix where the API has a model of its own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Element(BaseModel):
    model_config = ConfigDict(extra="allow")


class FhirCoding(_Element):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class FhirAuditEventAgent(_Element):
    requestor: bool
    who: dict[str, Any] | None = Field(None, description="`identifier`: the Auth0 sub")
    network: dict[str, Any] | None = Field(None, description="The source IP address")


class FhirAuditEventEntity(_Element):
    what: dict[str, Any] | None = Field(None, description="`Patient/{id}`, or an identifier")
    type: FhirCoding | None = None
    role: FhirCoding | None = None


class FhirAuditEvent(_Element):
    """One disclosure to one patient, or one event that named none (IHE BALP)."""

    resourceType: Literal["AuditEvent"]
    id: str = Field(description="`{seq}-{patient id}`, or `{seq}` for an event naming none")
    type: FhirCoding
    subtype: list[FhirCoding]
    action: Literal["C", "R", "U", "D", "E"]
    recorded: str
    outcome: Literal["0", "4", "8", "12"]
    outcomeDesc: str | None = None
    agent: list[FhirAuditEventAgent]
    source: dict[str, Any]
    entity: list[FhirAuditEventEntity] = []


class FhirBundleLink(_Element):
    relation: Literal["self", "next"]
    url: str


class FhirBundleEntry(_Element):
    fullUrl: str
    resource: FhirAuditEvent
    search: dict[str, Any] | None = None


class FhirBundle(_Element):
    """A page of search results; follow `link` `next` for the next one."""

    resourceType: Literal["Bundle"]
    type: Literal["searchset"]
    link: list[FhirBundleLink]
    entry: list[FhirBundleEntry] = []


class FhirPatient(_Element):
    resourceType: Literal["Patient"]
    id: str
    meta: dict[str, Any]
    name: list[dict[str, Any]]
    birthDate: str


class CapabilityStatement(_Element):
    resourceType: Literal["CapabilityStatement"]
    status: str
    kind: str
    fhirVersion: str
    format: list[str]
    rest: list[dict[str, Any]]


class OperationOutcomeIssue(_Element):
    severity: Literal["fatal", "error", "warning", "information"]
    code: str = Field(description="FHIR IssueType, e.g. invalid, not-supported, login")
    diagnostics: str | None = None
    expression: list[str] | None = Field(None, description="The offending parameter")


class OperationOutcome(_Element):
    """Every error under `/fhir`: one issue per offending parameter."""

    resourceType: Literal["OperationOutcome"]
    issue: list[OperationOutcomeIssue]


class AuditEventSearchQuery(BaseModel):
    """The search parameters (checked in app/fhir/search.py; an unknown one is a 400)."""

    model_config = ConfigDict(populate_by_name=True)

    date: list[str] = Field(
        description="Required, repeatable: `ge`/`gt` and `le`/`lt` bounds of at most 31 days, "
        "e.g. `date=ge2026-03-01&date=lt2026-03-02`, or one value (`date=2026-03-01`)"
    )
    patient: str | None = Field(None, description="`Patient/{id}` or the id")
    agent: str | None = Field(None, description="The acting user's Auth0 sub")
    action: Literal["C", "R", "U", "D", "E"] | None = None
    outcome: Literal["0", "4", "8", "12"] | None = None
    count: int = Field(50, ge=1, le=200, alias="_count", description="Resources per page")
    cursor: str | None = Field(
        None, alias="_cursor", max_length=1024, description="From the Bundle's `next` link"
    )
