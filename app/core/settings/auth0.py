"""The Auth0 tenant: where it is, the service's machine-to-machine application for the
Management API, and the policy of calls to it (timeouts, retries, breaker, profile cache)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from app.core.settings.group import Group
from app.core.settings.values import Quota, blank_is_unset, csv

# What python-jose can verify with a public key: no HS* (algorithm confusion), no none.
ASYMMETRIC_ALGORITHMS = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}


class Auth0Settings(Group):
    model_config = SettingsConfigDict(env_prefix="AUTH0_")

    domain: str
    management_domain: str | None = Field(
        default=None,
        description="The tenant's canonical domain (your-tenant.us.auth0.com) when AUTH0_DOMAIN "
        "is a custom domain: the Management API's audience and host.",
    )
    audience: str
    client_id: str
    client_secret: SecretStr
    base_url: str | None = None
    log_stream_token: SecretStr | None = None
    algorithms: Annotated[list[str], NoDecode] = ["RS256"]
    email_verified_claim: str = "email_verified"
    db_connection: str = "Username-Password-Authentication"
    timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    retry_budget_seconds: float = Field(default=3.0, ge=0, le=60)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=10.0, gt=0)
    log_id_retention_days: int = Field(default=90, ge=1)
    management_rate: str = Field(
        default="2/1",
        description="The Management API budget every copy shares: COUNT/SECONDS, or off. "
        "Auth0's free plan allows 2 per second; set your plan's limit (docs/deployment.md).",
    )
    profile_cache_seconds: float = Field(
        default=30.0,
        ge=0,
        validation_alias="PROFILE_CACHE_SECONDS",
        description="How long a fetched profile is fresh; after that it is refetched (within "
        "the budget) and served stale meanwhile.",
    )
    profile_max_stale_seconds: float = Field(
        default=86_400.0,
        gt=0,
        validation_alias="PROFILE_MAX_STALE_SECONDS",
        description="The oldest profile the profile page serves while Auth0 cannot be asked; "
        "older copies are deleted.",
    )

    @field_validator("management_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        Quota.parse(value)  # a readable ValueError for a malformed budget
        return value.strip()

    @field_validator("domain", "management_domain")
    @classmethod
    def _domain(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or (info.field_name == "management_domain" and not value.strip()):
            return None
        value = value.strip()
        if not value or "/" in value or ":" in value or " " in value:
            name = cls.env_name(info.field_name or "domain")
            raise ValueError(f"{name} is a host name like your-tenant.us.auth0.com")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError("AUTH0_BASE_URL must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("log_stream_token")
    @classmethod
    def _blank(cls, value: SecretStr | None) -> SecretStr | None:
        return blank_is_unset(value)  # type: ignore[no-any-return]

    @field_validator("algorithms", mode="before")
    @classmethod
    def _algorithms(cls, value: Any) -> Any:
        return csv(value)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if bad or not value:
            raise ValueError(f"AUTH0_ALGORITHMS may list only {sorted(ASYMMETRIC_ALGORITHMS)}")
        return value

    @property
    def management_quota(self) -> Quota | None:
        """The Management API budget; None when AUTH0_MANAGEMENT_RATE is off."""
        return Quota.parse(self.management_rate)

    @property
    def issuer(self) -> str:
        """The exact `iss` every token must carry, whatever `AUTH0_BASE_URL` says."""
        return f"https://{self.domain}/"

    @property
    def tenant_url(self) -> str:
        """Where requests to AUTH0_DOMAIN go: the JWKS, sign-in, logout, the Authentication
        API (a local stand-in in development and tests)."""
        return self.base_url or f"https://{self.domain}"

    @property
    def jwks_url(self) -> str:
        return f"{self.tenant_url}/.well-known/jwks.json"

    @property
    def management_url(self) -> str:
        """Where the Management API and its token requests go: the canonical domain, whose
        tokens the Management API accepts. AUTH0_BASE_URL stands in for both domains."""
        return self.base_url or f"https://{self.management_domain or self.domain}"

    @property
    def management_audience(self) -> str:
        """The Management API's identifier, always on the canonical domain, whatever
        AUTH0_BASE_URL says."""
        return f"https://{self.management_domain or self.domain}/api/v2/"
