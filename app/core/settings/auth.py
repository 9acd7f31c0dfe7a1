"""Access tokens: how they are checked (leeway, JWKS, the cache of verified tokens), how long
a revocation is remembered, and what routes demand beyond a permission."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from app.core.settings.group import Group
from app.core.settings.values import csv

MAX_TOKEN_LIFETIME = 30 * 86_400  # Auth0's longest access-token lifetime


class AuthSettings(Group):
    leeway_seconds: int = Field(default=30, ge=0, le=300, validation_alias="TOKEN_LEEWAY_SECONDS")
    jwks_max_age_seconds: int = Field(default=600, ge=1)
    jwks_cooldown_seconds: float = Field(default=30.0, ge=0)
    token_cache_size: int = Field(default=10_000, ge=0)
    max_token_lifetime_seconds: int = Field(
        default=MAX_TOKEN_LIFETIME,
        ge=60,
        description="A token whose exp is further ahead than this is refused (Auth0's own "
        "maximum access-token lifetime is 30 days).",
    )
    revoked_session_seconds: float = Field(default=MAX_TOKEN_LIFETIME, ge=0)
    require_verified_email_for: Annotated[list[str], NoDecode] = [
        "create:patients",
        "update:patients",
        "delete:patients",
    ]
    require_mfa_for: Annotated[list[str], NoDecode] = []

    @field_validator("require_verified_email_for", "require_mfa_for", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return csv(value)

    @model_validator(mode="after")
    def _sessions_outlive_tokens(self) -> Self:
        # A signed-out session's other tokens (another tab, a refresh) stay valid until their
        # exp: forgetting the revocation sooner would let them back in.
        if self.revoked_session_seconds < self.max_token_lifetime_seconds:
            raise ValueError(
                f"REVOKED_SESSION_SECONDS ({self.revoked_session_seconds:g}) must be at least "
                f"MAX_TOKEN_LIFETIME_SECONDS ({self.max_token_lifetime_seconds})"
            )
        return self
