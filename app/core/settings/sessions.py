"""Cookie sessions, the backend-for-frontend's own sign-in (docs/sessions.md): off unless
SESSION_CLIENT_ID names the Auth0 Regular Web Application."""

from __future__ import annotations

import re
from typing import Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from app.core.settings.group import Group
from app.core.settings.server import LOCAL_HOSTS
from app.core.settings.values import blank_is_unset, parse_fernet_keys

CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class SessionSettings(Group):
    model_config = SettingsConfigDict(env_prefix="SESSION_")

    client_id: str | None = Field(
        default=None,
        description="The Auth0 Regular Web Application of cookie sessions; unset: /auth/* is off.",
    )
    client_secret: SecretStr | None = None
    encryption_key: SecretStr | None = Field(
        default=None,
        description="Fernet keys, comma-separated: the first encrypts the stored tokens, every "
        "one decrypts (rotation).",
    )
    idle_seconds: int = Field(default=8 * 3600, ge=60, le=30 * 86_400)
    absolute_seconds: int = Field(default=7 * 86_400, ge=300, le=90 * 86_400)
    max_pending_per_address: int = Field(
        default=20,
        ge=1,
        le=10_000,
        description="Sign-ins in progress kept per client address (IPv6: per /64); one more "
        "evicts that address's oldest.",
    )
    max_pending: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Sign-ins in progress kept in all; one more evicts the oldest.",
    )
    max_per_user: int = Field(
        default=10,
        ge=1,
        le=1_000,
        description="Sessions one user may hold; signing in past it ends the oldest.",
    )
    logout_return_url: str | None = Field(
        default=None,
        validation_alias="LOGOUT_RETURN_URL",
        description="Where the tenant sends the browser after sign-out (one of the "
        "application's Allowed Logout URLs); unset: {PUBLIC_URL}/.",
    )
    dpop: bool = Field(
        default=False,
        description="Bind each session's tokens to a key of its own (DPoP, docs/dpop.md).",
    )

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if not value:
            return None
        if not CLIENT_ID.fullmatch(value):
            raise ValueError("an Auth0 client id: 1-128 of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("logout_return_url")
    @classmethod
    def _logout_return_url(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if not value:
            return None
        # Any site the operator chooses (Auth0's Allowed Logout URLs is the list that binds);
        # https, so the page a user lands on after signing out cannot be tampered with.
        parts = urlsplit(value)
        local = parts.hostname in LOCAL_HOSTS
        if parts.scheme != "https" and not (parts.scheme == "http" and local):
            raise ValueError("an https URL (http only for localhost)")
        if not parts.hostname or parts.username or parts.password or parts.fragment:
            raise ValueError("an absolute URL with a host and no credentials or fragment")
        return value

    @field_validator("client_secret", "encryption_key")
    @classmethod
    def _blank(cls, value: SecretStr | None) -> SecretStr | None:
        return blank_is_unset(value)  # type: ignore[no-any-return]

    @field_validator("encryption_key")
    @classmethod
    def _keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_fernet_keys(value.get_secret_value())  # a ValueError that never quotes a key
        return value

    @model_validator(mode="after")
    def _idle_within_absolute(self) -> Self:
        if self.idle_seconds > self.absolute_seconds:
            raise ValueError("SESSION_IDLE_SECONDS must not exceed SESSION_ABSOLUTE_SECONDS")
        return self

    @model_validator(mode="after")
    def _pending_within_total(self) -> Self:
        if self.max_pending_per_address > self.max_pending:
            raise ValueError("SESSION_MAX_PENDING_PER_ADDRESS must not exceed SESSION_MAX_PENDING")
        return self

    @property
    def enabled(self) -> bool:
        """Whether /auth/* and the session cookie are on (SESSION_CLIENT_ID is set)."""
        return self.client_id is not None
