"""Profiles and registrations: what the five seed flows read and write besides patients.

The profile itself lives in Auth0; this module decides which fields may be changed, shapes
what a frontend may see of a Management API user, and keeps the registration rows.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

import asyncpg
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from app.auth.tokens import Principal

# The bidirectional embedding, override and isolate controls (U+202A-U+202E, U+2066-U+2069):
# a name holding them displays other than it reads. The joiners ZWJ and ZWNJ stay allowed.
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def _no_bidi_controls(value: str) -> str:
    if _BIDI_CONTROLS.search(value):
        raise ValueError("must not contain bidirectional text controls")
    return value


Name = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=150, pattern=r"^[^\x00-\x1f\x7f]+$"
    ),
    AfterValidator(_no_bidi_controls),
]
_PHONE = re.compile(r"^\+?[0-9][0-9 ()./-]{5,30}$")


class _NoNulls(BaseModel):
    """Fields are optional, but a field that is sent must have a value: `null` is refused by
    name (Auth0 would read it as "delete this", which is not an allowed change here)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null")
        return value


class ProfileAddress(_NoNulls):
    """The caller's own address, as kept in Auth0 `user_metadata` (not a patient's)."""

    line: list[Annotated[str, StringConstraints(max_length=200)]] | None = Field(None, max_length=4)
    city: Annotated[str, StringConstraints(max_length=100)] | None = None
    postal_code: Annotated[str, StringConstraints(max_length=20)] | None = None
    country: Annotated[str, StringConstraints(max_length=100)] | None = None


class UserMetadata(_NoNulls):
    """The only `user_metadata` keys a frontend may set; each is sent to Auth0 whole."""

    phone_number: str | None = None
    address: ProfileAddress | None = None
    date_of_birth: dt.date | None = None

    @field_validator("phone_number")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is not None and not _PHONE.match(value):
            raise ValueError("not a phone number")
        return value

    @field_validator("date_of_birth")
    @classmethod
    def _born(cls, value: dt.date | None) -> dt.date | None:
        if value is not None and not dt.date(1900, 1, 1) <= value <= dt.date.today():
            raise ValueError("must be a real date of birth, not in the future")
        return value


class ProfileUpdate(_NoNulls):
    """`PATCH /api/profile`: any subset of these; anything else is refused by name."""

    given_name: Name | None = None
    family_name: Name | None = None
    name: Name | None = None
    nickname: Name | None = None
    picture: AnyHttpUrl | None = None
    user_metadata: UserMetadata | None = None

    @field_validator("picture")
    @classmethod
    def _https(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        if value is not None and value.scheme != "https":
            raise ValueError("must be an https URL")
        return value

    def to_auth0(self) -> dict[str, Any]:
        """The Management API body: only the fields sent, metadata objects whole."""
        body = self.model_dump(mode="json", exclude_unset=True)
        if "user_metadata" in body:
            sent = self.user_metadata.model_fields_set if self.user_metadata else set()
            body["user_metadata"] = {k: v for k, v in body["user_metadata"].items() if k in sent}
        return body

    def changed_fields(self) -> list[str]:
        """Names (never values) of what this update changes, for the audit record."""
        names = [f for f in sorted(self.model_fields_set) if f != "user_metadata"]
        if self.user_metadata is not None:
            names += [f"user_metadata.{f}" for f in sorted(self.user_metadata.model_fields_set)]
        return names


class Profile(BaseModel):
    """What a frontend sees of its user: no identities, app_metadata or last_ip."""

    user_id: str
    email: str | None = None
    email_verified: bool | None = None
    given_name: str | None = None
    family_name: str | None = None
    name: str | None = None
    nickname: str | None = None
    picture: str | None = None
    user_metadata: dict[str, Any] = Field(default_factory=dict)
    updated_at: str | None = None


class ProfilePatientsPage(BaseModel):
    """The first page of the caller's patients, shown with the profile."""

    items: list[dict[str, Any]]
    next_cursor: str | None


class ProfileMeta(BaseModel):
    profile_age_seconds: int = Field(
        description="How old the profile is (also the Age header): a copy kept for every "
        "copy of the service, refetched from Auth0 within its Management API budget"
    )


class ProfileAndPatients(BaseModel):
    profile: Profile
    patients: ProfilePatientsPage
    meta: ProfileMeta


_SAFE_METADATA = set(UserMetadata.model_fields)


def safe_profile(user: dict[str, Any]) -> Profile:
    """Filter a Management API user down to the fields a frontend may see."""
    metadata = user.get("user_metadata")
    return Profile(
        user_id=str(user.get("user_id", "")),
        email=_str(user.get("email")),
        email_verified=user.get("email_verified")
        if isinstance(user.get("email_verified"), bool)
        else None,
        given_name=_str(user.get("given_name")),
        family_name=_str(user.get("family_name")),
        name=_str(user.get("name")),
        nickname=_str(user.get("nickname")),
        picture=_str(user.get("picture")),
        user_metadata={k: v for k, v in metadata.items() if k in _SAFE_METADATA}
        if isinstance(metadata, dict)
        else {},
        updated_at=_str(user.get("updated_at")),
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class Registration(BaseModel):
    user_id: str
    registered_at: dt.datetime


class Me(BaseModel):
    user_id: str
    registered: bool
    registered_at: dt.datetime | None
    last_seen_at: dt.datetime | None
    patient_count: int
    permissions: list[str]
    org_id: str | None


INSERT_REGISTRATION = """
INSERT INTO registrations (auth0_user_id, email) VALUES ($1, $2)
ON CONFLICT (auth0_user_id) DO NOTHING
RETURNING registered_at
"""
SELECT_REGISTRATION = """
SELECT registered_at, last_seen_at FROM registrations WHERE auth0_user_id = $1
"""
COUNT_PATIENTS = "SELECT count(*) FROM patients WHERE scope = $1 AND deleted_at IS NULL"
INSERT_SESSION = """
INSERT INTO sign_in_sessions (session_key, auth0_user_id, expires_at)
VALUES ($1, $2, to_timestamp($3))
ON CONFLICT (session_key) DO NOTHING
RETURNING first_seen_at
"""
TOUCH_REGISTRATION = "UPDATE registrations SET last_seen_at = $2 WHERE auth0_user_id = $1"
PURGE_SESSIONS = """
DELETE FROM sign_in_sessions WHERE session_key IN (
    SELECT session_key FROM sign_in_sessions WHERE expires_at < now() LIMIT $1)
"""
_PURGE_BATCH = 1000


async def register(
    conn: asyncpg.Connection, user_id: str, email: str | None
) -> tuple[dt.datetime, bool]:
    """(registered_at, created now?) — idempotent and safe under concurrent calls."""
    created = await conn.fetchval(INSERT_REGISTRATION, user_id, email)
    if created is not None:
        return created, True
    existing = await conn.fetchrow(SELECT_REGISTRATION, user_id)
    return existing["registered_at"], False


def session_key(principal: Principal) -> str:
    """What identifies one sign-in: Auth0's session id, else the token id, else its iat."""
    if principal.sid:
        return f"sid:{principal.sid}"
    if principal.jti:
        return f"jti:{principal.jti}"
    return f"iat:{principal.sub}:{principal.iat}"


async def note_sign_in(conn: asyncpg.Connection, principal: Principal) -> dt.datetime | None:
    """Record the session as seen; its first-seen time if this call saw it first."""
    first_seen: dt.datetime | None = await conn.fetchval(
        INSERT_SESSION, session_key(principal), principal.sub, principal.exp
    )
    if first_seen is not None:
        await conn.execute(TOUCH_REGISTRATION, principal.sub, first_seen)
    return first_seen


async def purge_sessions(conn: asyncpg.Connection) -> None:
    """Forget sign-in sessions whose tokens have all expired (a periodic purge), in batches
    so no statement holds many row locks."""
    for _ in range(100):
        status: str = await conn.execute(PURGE_SESSIONS, _PURGE_BATCH, timeout=30)
        if int(status.rsplit(" ", 1)[-1]) < _PURGE_BATCH:
            return
