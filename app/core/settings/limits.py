"""Request rate limits per client address and per user, and where copies share their counts."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from app.core.settings.group import Group
from app.core.settings.values import Quota


class RateLimitSettings(Group):
    model_config = SettingsConfigDict(env_prefix="RATE_LIMIT_")

    per_ip: str = Field(
        default="600/60", description="Requests per client address: COUNT/SECONDS, or off."
    )
    per_user: str = Field(
        default="300/60", description="Requests per user (token sub): COUNT/SECONDS, or off."
    )
    sync_seconds: float = Field(default=0.5, ge=0.05, le=10)
    redis_url: SecretStr | None = Field(
        default=None,
        validation_alias="REDIS_URL",
        description="Share rate-limit counters through Redis instead of Postgres.",
    )

    @field_validator("per_ip", "per_user")
    @classmethod
    def _quota(cls, value: str) -> str:
        Quota.parse(value)  # a readable ValueError for a malformed limit
        return value.strip()

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if urlsplit(value.get_secret_value()).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
        try:  # asked now: the sharing starts after the app does, too late to say so
            importlib.import_module("redis.asyncio")
        except ImportError:
            raise ValueError(
                "REDIS_URL is set but the redis package is not installed "
                "(pip install 'auth0-bff[redis]'; the image has it)"
            ) from None
        return value

    @property
    def ip_quota(self) -> Quota | None:
        return Quota.parse(self.per_ip)

    @property
    def user_quota(self) -> Quota | None:
        return Quota.parse(self.per_user)
