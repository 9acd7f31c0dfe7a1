"""The audit log as clients query and receive it: query strings and response bodies.

The models are the OpenAPI description too (`/openapi.json`); API.md fixes the names of the
audit event's fields, and more may be added.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    field_validator,
)

from app.core.text import refuse_controls

ACTION_FILTER = r"^[a-z_]+(\.[a-z_]+)*(\.\*|(\.[a-z_]+))$"
FILTERS = ("actor", "action", "patient_id", "outcome", "request_id")
# A filter's free text: no control characters (a NUL would reach Postgres, which refuses it).
Text = Annotated[str, AfterValidator(refuse_controls)]


class Window(BaseModel):
    """The required time window of a query (checked in the handler: at most 31 days)."""

    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime | None = Field(
        None, description="Start of the window (inclusive), with a time zone. Required."
    )
    until: AwareDatetime | None = Field(
        None, description="End of the window (exclusive); at most 31 days after `since`."
    )

    @field_validator("since", "until")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        """A time that exists in UTC too (`0001-01-01T00:00:00+05:00` does not)."""
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("out of range") from None


class Filtered(Window):
    """The window and the optional filters."""

    actor: Text | None = Field(None, min_length=1, max_length=255, description="The actor's sub")
    action: str | None = Field(
        None,
        max_length=100,
        pattern=ACTION_FILTER,
        description="An action code, or a prefix: patient.*",
    )
    patient_id: uuid.UUID | None = None
    outcome: Literal["success", "denied", "failed"] | None = None
    request_id: Text | None = Field(None, min_length=1, max_length=128)


class AuditEventsQuery(Filtered):
    limit: int = Field(50, ge=1, le=200, description="Page size")
    cursor: str | None = Field(None, max_length=1024, description="`next_cursor` of a page")
    from_seq: int | None = Field(
        None, ge=0, description="Checkpoint mode: events with seq above this, ascending"
    )
    take: int | None = Field(None, ge=1, le=1000, description="Checkpoint mode page size")


class ExportQuery(Filtered):
    format: Literal["ndjson", "csv", "fhir-ndjson"] = Field(
        "ndjson", description="`fhir-ndjson`: FHIR AuditEvent resources after IHE BALP"
    )


class VerifyQuery(Window):
    pass


class AccessReportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=1024)


class AuditEventOut(BaseModel):
    seq: int
    id: uuid.UUID
    recorded_at: datetime
    occurred_at: datetime
    scope: str = Field(description="The tenant the event belongs to (org_id, else the sub)")
    action: str
    crud: Literal["C", "R", "U", "D", "E"]
    outcome: Literal["success", "denied", "failed"]
    outcome_reason: str | None
    actor: str | None = Field(description="The actor's sub")
    client_id: str | None
    session_id: str | None
    token_id: str | None
    source_ip: str | None
    user_agent: str | None
    entity_type: str | None
    entity_id: str | None
    patient_id: uuid.UUID | None
    request_id: str | None
    detail: dict[str, Any]
    prev_hash: str | None = Field(description="Hex SHA-256 of the previous event in the scope")
    hash: str = Field(description="Hex SHA-256 chaining this event (see app/audit/chain.py)")


class AuditEventPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None


class AccessReportPage(AuditEventPage):
    archived_months: list[str] = Field(
        description="Months (YYYY-MM) sealed into archives and no longer in the log, oldest "
        "first: the report lists no event of theirs; `python -m app audit access-report` "
        "lists them from the archives (docs/audit.md)"
    )


class AuditFeedPage(BaseModel):
    items: list[AuditEventOut]
    next_from_seq: int = Field(description="Pass as from_seq to continue (also in Link)")
    watermark: int = Field(description="Every event at or below this seq is final")


class AuditEventsResponse(RootModel[AuditEventPage | AuditFeedPage]):
    """A page (window mode) or a checkpoint page (`from_seq` mode)."""


class ChainVerification(BaseModel):
    status: Literal["intact", "broken"]
    count: int = Field(description="Events found intact (before the break, when broken)")
    first_seq: int | None
    last_seq: int | None
    broken_seq: int | None = None
    broken_id: uuid.UUID | None = None
    reason: str | None = None


class DigestsQuery(Window):
    """Digests issued in [since, until); both optional (from the first, up to now)."""

    limit: int = Field(50, ge=1, le=200, description="Page size")
    cursor: str | None = Field(None, max_length=1024, description="`next_cursor` of a page")


class DigestOut(BaseModel):
    number: int = Field(description="Place in the chain of digests: 1, 2, ...")
    issued_at: datetime
    kid: str = Field(description="The signing key's id in GET /.well-known/audit-keys")
    after_seq: int
    watermark: int = Field(description="Every event with seq <= watermark is covered")
    heads: int = Field(description="How many chain heads the digest signs")
    prev_hash: str | None = Field(description="Hex SHA-256 of the previous digest's JWS")
    hash: str = Field(description="Hex SHA-256 of this digest's JWS")
    jws: str = Field(
        description="The digest: a compact JWS (EdDSA) whose payload is the authority; "
        "the other fields are read from it for convenience (docs/audit.md)"
    )
    your_scope: str | None = Field(
        description="The caller's scope's name in this digest's heads (`scope_hash`): an "
        "HMAC only the service can compute, so each tenant finds its own heads and no "
        "other's. Null when the scope key that named them is no longer configured"
    )


class DigestPage(BaseModel):
    items: list[DigestOut]
    next_cursor: str | None


class AuditKey(BaseModel):
    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    use: Literal["sig"] = "sig"
    alg: Literal["EdDSA"] = "EdDSA"


class AuditKeySet(BaseModel):
    keys: list[AuditKey] = Field(
        description="AUDIT_SIGNING_KEY's public keys (the signing key first), then "
        "AUDIT_RETIRED_KEYS': configuration only, never the database"
    )
