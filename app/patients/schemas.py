"""The patient as clients send and receive it (API.md "Bodies that clients depend on").

Validation is strict and never echoes a value back: error messages name the rule, not the
input, because the input is personal data. Names may be any script; control characters are
refused as everywhere (app/core/text.py: separators, non-characters and the bidirectional
controls too; the joiners ZWJ and ZWNJ, which some scripts need, are not). Text is stored
NFC.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.core.text import refuse_controls

Gender = Literal["male", "female", "other", "unknown"]

# Oldest plausible birth date: about 150 years ago (the oldest person on record lived 122).
MAX_AGE_DAYS = 150 * 366
# The latest date anywhere on Earth is UTC+14: "today" for a patient born there.
_EARLIEST_OFFSET = timedelta(hours=14)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PHONE_SEPARATORS = re.compile(r"[\s().-]")
_E164 = re.compile(r"\+[1-9]\d{5,14}")
_COUNTRY = re.compile(r"[A-Z]{2,3}")


def clean_text(value: str, *, max_length: int) -> str:
    """NFC, trimmed, 1..max_length characters, no control characters."""
    value = unicodedata.normalize("NFC", value).strip()
    if not value:
        raise ValueError("must not be empty")
    if len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters")
    return refuse_controls(value)  # the rule every free-text input follows


def parse_date(value: object) -> date:
    """A calendar date written `YYYY-MM-DD` (a JSON string; never a number or a datetime)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "must be a date string YYYY-MM-DD")
    if not _DATE.fullmatch(value):
        raise ValueError("must be a date written YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a real calendar date") from None


def plausible_birth_date(value: date) -> date:
    latest = (datetime.now(UTC) + _EARLIEST_OFFSET).date()
    if value > latest:
        raise ValueError("must not be in the future")
    if value < latest - timedelta(days=MAX_AGE_DAYS):
        raise ValueError("is implausibly long ago")
    return value


def normalise_phone(value: str) -> str:
    """E.164: `+`, country code, subscriber number; spaces, dots, dashes and () are dropped."""
    compact = _PHONE_SEPARATORS.sub("", value)
    if not _E164.fullmatch(compact):
        raise ValueError("must be an international number like +14155550123")
    return compact


def normalise_email(value: str) -> str:
    # email-validator's own messages quote the offending characters; ours never do.
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError:
        raise ValueError("is not a valid email address") from None


def normalise_country(value: str) -> str:
    value = value.strip().upper()
    if not _COUNTRY.fullmatch(value):
        raise ValueError("must be an ISO 3166 country code such as DE or USA")
    return value


def _text(max_length: int) -> AfterValidator:
    return AfterValidator(partial(clean_text, max_length=max_length))


Name = Annotated[str, _text(200)]
IdentifierPart = Annotated[str, _text(255)]
AddressLine = Annotated[str, _text(200)]
BirthDate = Annotated[date, BeforeValidator(parse_date), AfterValidator(plausible_birth_date)]
Phone = Annotated[str, Field(max_length=40), AfterValidator(normalise_phone)]
Email = Annotated[str, Field(max_length=320), AfterValidator(normalise_email)]


class Identifier(BaseModel):
    """A business identifier, e.g. a medical record number: `system` names the issuer."""

    model_config = ConfigDict(extra="forbid")

    system: IdentifierPart
    value: IdentifierPart


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line: list[AddressLine] | None = Field(default=None, min_length=1, max_length=4)
    city: Annotated[str, _text(100)] | None = None
    postal_code: Annotated[str, _text(20)] | None = None
    country: Annotated[str, AfterValidator(normalise_country)] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Address:
        if all(v is None for v in (self.line, self.city, self.postal_code, self.country)):
            raise ValueError("an address needs at least one of line, city, postal_code, country")
        return self


class PatientCreate(BaseModel):
    """The body of `POST /api/patients`."""

    model_config = ConfigDict(extra="forbid")

    given_name: Name
    family_name: Name
    birth_date: BirthDate
    gender: Gender | None = None
    identifier: Identifier | None = None
    phone: Phone | None = None
    email: Email | None = None
    address: Address | None = None
    active: StrictBool = True

    def fields(self) -> dict[str, Any]:
        """API field name to value, nested models as dicts (the storage layer's input)."""
        return self.model_dump(exclude={"address"}) | {"address": dump_address(self.address)}


class PatientPatch(BaseModel):
    """The body of `PATCH /api/patients/{id}`: any subset; `null` clears an optional field."""

    model_config = ConfigDict(extra="forbid")

    given_name: Name | None = None
    family_name: Name | None = None
    birth_date: BirthDate | None = None
    gender: Gender | None = None
    identifier: Identifier | None = None
    phone: Phone | None = None
    email: Email | None = None
    address: Address | None = None
    active: StrictBool | None = None

    @field_validator("given_name", "family_name", "birth_date", "active")
    @classmethod
    def _required_stays(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be removed")
        return value

    @model_validator(mode="after")
    def _something(self) -> PatientPatch:
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        return self

    def changes(self) -> dict[str, Any]:
        """Only the fields sent, as `PatientCreate.fields` shapes them."""
        sent = self.model_dump(include=self.model_fields_set, exclude={"address"})
        if "address" in self.model_fields_set:
            sent["address"] = dump_address(self.address)
        return sent


def dump_address(address: Address | None) -> dict[str, Any] | None:
    return address.model_dump(exclude_none=True) if address is not None else None


class PatientOut(BaseModel):
    """A patient in a response."""

    id: UUID
    identifier: Identifier | None
    given_name: str
    family_name: str
    birth_date: date
    gender: Gender | None
    phone: str | None
    email: str | None
    address: Address | None
    active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class PatientPage(BaseModel):
    """One page of a patient list; pass `next_cursor` back as `cursor` for the next."""

    items: list[PatientOut]
    next_cursor: str | None


def parse_identifier_token(value: str) -> str:
    system, bar, ident = value.partition("|")
    if not bar or not system or not ident:
        raise ValueError("must be system|value")
    clean_text(system, max_length=255)
    clean_text(ident, max_length=255)
    return value


class PatientSearch(BaseModel):
    """Query of `GET /api/patients`; every filter given must match."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = Field(
        default=None,
        description="Prefix of the given or family name; case and accents are ignored.",
    )
    birth_date: Annotated[date, BeforeValidator(parse_date)] | None = Field(
        default=None, description="Exact birth date, YYYY-MM-DD."
    )
    identifier: Annotated[str, AfterValidator(parse_identifier_token)] | None = Field(
        default=None, description="Exact identifier as system|value."
    )
    limit: int = Field(default=50, ge=1, le=200, description="Page size, at most 200.")
    cursor: str | None = Field(
        default=None, max_length=1024, description="`next_cursor` of the previous page."
    )

    def identifier_pair(self) -> tuple[str, str] | None:
        if self.identifier is None:
            return None
        system, _, value = self.identifier.partition("|")
        return (
            clean_text(system, max_length=255),
            clean_text(value, max_length=255),
        )


# --- A stored patient as the API shows it --------------------------------------------------

Patient = dict[str, Any]


def etag(version: int) -> str:
    """The weak ETag of a patient's version, as `If-Match` must name it."""
    return f'W/"{version}"'


def patient_json(row: Mapping[str, Any]) -> Patient:
    """A stored row as the API shows it (`PatientOut`); orjson renders dates and UUIDs."""
    system = row["identifier_system"]
    return {
        "id": str(row["id"]),
        "identifier": {"system": system, "value": row["identifier_value"]} if system else None,
        "given_name": row["given_name"],
        "family_name": row["family_name"],
        "birth_date": row["birth_date"],
        "gender": row["gender"],
        "phone": row["phone"],
        "email": row["email"],
        "address": orjson.loads(row["address"]) if row["address"] else None,
        "active": row["active"],
        "version": row["version"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
