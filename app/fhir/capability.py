"""`GET /fhir/metadata`: the `CapabilityStatement` a FHIR client reads before anything else.

It names what the service offers and nothing more: `AuditEvent` (read, search-type, with its
search parameters) and `Patient` (read), JSON only, behind Auth0 bearer tokens.
"""

from __future__ import annotations

from typing import Any

from app.fhir.search import DEFAULT_COUNT, MAX_COUNT

FHIR_VERSION = "4.0.1"
# The date of this statement's content; change it with the content.
STATEMENT_DATE = "2026-12-01"
_SEARCH_PARAMETER = "http://hl7.org/fhir/SearchParameter/"

_AUDIT_EVENT_PARAMETERS = [
    {
        "name": "date",
        "definition": _SEARCH_PARAMETER + "AuditEvent-date",
        "type": "date",
        "documentation": "When the event was recorded. Required: a window of at most 31 days "
        "with a lower (ge, gt) and an upper (le, lt) bound, or one eq value (a day, a month). "
        "A value with a time needs its time zone; a bare date is a UTC day.",
    },
    {
        "name": "patient",
        "definition": _SEARCH_PARAMETER + "AuditEvent-patient",
        "type": "reference",
        "documentation": "Patient/{id} or the id: events that disclosed this patient, one "
        "resource each.",
    },
    {
        "name": "agent",
        "type": "token",
        "documentation": "The Auth0 user id (sub) of the user who acted.",
    },
    {
        "name": "action",
        "definition": _SEARCH_PARAMETER + "AuditEvent-action",
        "type": "token",
        "documentation": "C, R, U, D or E.",
    },
    {
        "name": "outcome",
        "definition": _SEARCH_PARAMETER + "AuditEvent-outcome",
        "type": "token",
        "documentation": "0 (success), 4 (denied or minor failure), 8 (failed), 12 (none here).",
    },
]


def capability_statement(base: str, software: str, version: str) -> dict[str, Any]:
    """The statement for a service whose FHIR base URL is `base`."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": STATEMENT_DATE,
        "kind": "instance",
        "software": {"name": software, "version": version},
        "implementation": {
            "description": "The audit log as FHIR AuditEvent resources (IHE BALP)",
            "url": base,
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "restful-security-service",
                                    "code": "OAuth",
                                }
                            ]
                        }
                    ],
                    "description": "An Auth0 access token for this API as a bearer token; "
                    "AuditEvent needs read:audit_events, Patient read:patients.",
                },
                "resource": [
                    {
                        "type": "AuditEvent",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "documentation": "One resource per patient per recorded disclosure "
                        f"(IHE BALP). Pages of _count resources (default {DEFAULT_COUNT}, at "
                        f"most {MAX_COUNT}), newest first; follow the Bundle's next link.",
                        "searchParam": _AUDIT_EVENT_PARAMETERS,
                    },
                    {"type": "Patient", "interaction": [{"code": "read"}]},
                ],
            }
        ],
    }
