"""Configuration: read once from the environment (and `.env`), validated at start-up.

Required values have no default, so a missing one stops start-up with a line naming it.
Secrets are `SecretStr`: they print as `**********` in reprs, logs and tracebacks.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}


@dataclass(frozen=True, slots=True)
class Quota:
    """`count` requests per `seconds`, e.g. `Quota(600, 60)`."""

    count: int
    seconds: float

    def __post_init__(self) -> None:
        if self.count < 1 or self.seconds < 0.001:
            raise ValueError("a quota needs count >= 1 and seconds >= 0.001")

    @classmethod
    def parse(cls, text: str) -> Quota | None:
        """`"600/60"` (600 per 60 s) as a `Quota`; `"off"` or `""` as None (no limit)."""
        text = text.strip().lower()
        if text in {"", "off", "none"}:
            return None
        count, slash, seconds = text.partition("/")
        try:
            if not slash:
                raise ValueError(text)
            return cls(int(count), float(seconds.rstrip("s")))
        except ValueError:
            raise ValueError(
                f"a rate limit is COUNT/SECONDS like 600/60, or off; got {text!r}"
            ) from None

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}"


class ConfigError(Exception):
    """Start-up configuration is missing or invalid; the message is one line for humans."""


def _check_postgres_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in _POSTGRES_SCHEMES:
        raise ValueError(f"{name} must be a postgresql:// URL")
    if not parts.path.strip("/"):
        raise ValueError(f"{name} must name a database (postgresql://user@host:port/dbname)")
    return value


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # --- Database -------------------------------------------------------------------------
    database_url: str = Field(description="The application's connection (INSERT/SELECT role).")
    migrations_database_url: str | None = Field(
        default=None, description="The owner role's connection for migrations."
    )
    db_pool_min_size: int = Field(default=2, ge=1, le=100)
    db_pool_max_size: int = Field(default=10, ge=1, le=500)
    db_statement_timeout_ms: int = Field(default=5000, ge=100)

    # --- Auth0 tenant ---------------------------------------------------------------------
    auth0_domain: str
    auth0_audience: str
    auth0_client_id: str
    auth0_client_secret: SecretStr
    auth0_base_url: str | None = None
    auth0_log_stream_token: SecretStr | None = None
    auth0_algorithms: Annotated[list[str], NoDecode] = ["RS256"]
    auth0_email_verified_claim: str = "email_verified"
    auth0_db_connection: str = "Username-Password-Authentication"
    auth0_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    auth0_retry_budget_seconds: float = Field(default=3.0, ge=0, le=60)
    auth0_breaker_failures: int = Field(default=5, ge=1)
    auth0_breaker_cooldown_seconds: float = Field(default=10.0, gt=0)
    profile_cache_seconds: float = Field(default=30.0, ge=0)

    # --- Tokens ---------------------------------------------------------------------------
    token_leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwks_max_age_seconds: int = Field(default=600, ge=1)
    jwks_cooldown_seconds: float = Field(default=30.0, ge=0)
    token_cache_size: int = Field(default=10_000, ge=0)

    # --- Service --------------------------------------------------------------------------
    app_secret_key: SecretStr | None = Field(
        default=None,
        description="Signs pagination cursors and keys hashes; derived from the client "
        "secret when unset, so every copy of the service agrees.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    # --- Account (password reset, verification email, sessions, log streams) --------------
    require_verified_email_for: Annotated[list[str], NoDecode] = [
        "create:patients",
        "update:patients",
        "delete:patients",
    ]
    require_mfa_for: Annotated[list[str], NoDecode] = []
    rate_limit_password_reset_ip_count: int = Field(default=20, ge=1)
    rate_limit_password_reset_ip_seconds: float = Field(default=900, gt=0)
    rate_limit_password_reset_email_count: int = Field(default=5, ge=1)
    rate_limit_password_reset_email_seconds: float = Field(default=900, gt=0)
    rate_limit_verification_email_count: int = Field(default=3, ge=1)
    rate_limit_verification_email_seconds: float = Field(default=900, gt=0)
    revoked_session_seconds: float = Field(default=86_400, ge=0)
    auth0_log_id_retention_days: int = Field(default=90, ge=1)

    # --- Browser-facing hardening ---------------------------------------------------------
    cors_allowed_origins: Annotated[list[str], NoDecode] = []
    trusted_proxies: Annotated[list[str], NoDecode] = []
    hsts_seconds: int = Field(default=0, ge=0)

    # --- Rate limits (app/ratelimit/) -------------------------------------------------------------
    rate_limit_per_ip: str = Field(
        default="600/60", description="Requests per client address: COUNT/SECONDS, or off."
    )
    rate_limit_per_user: str = Field(
        default="300/60", description="Requests per user (token sub): COUNT/SECONDS, or off."
    )
    rate_limit_sync_seconds: float = Field(default=0.5, ge=0.05, le=10)
    redis_url: SecretStr | None = Field(
        default=None, description="Share rate-limit counters through Redis instead of Postgres."
    )

    @field_validator("rate_limit_per_ip", "rate_limit_per_user")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        Quota.parse(value)  # a readable ValueError for a malformed limit
        return value.strip()

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if urlsplit(value.get_secret_value()).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator(
        "cors_allowed_origins",
        "trusted_proxies",
        "require_verified_email_for",
        "require_mfa_for",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _csv(value)

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            parts = urlsplit(origin)
            if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path:
                raise ValueError(
                    "CORS_ALLOWED_ORIGINS lists origins like https://app.example.com "
                    "(no wildcard, no path)"
                )
        return [origin.rstrip("/") for origin in value]

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"TRUSTED_PROXIES: {network!r} is not an IP address or network"
                ) from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return _check_postgres_url(value, "DATABASE_URL")

    @field_validator("migrations_database_url")
    @classmethod
    def _migrations_url(cls, value: str | None) -> str | None:
        return None if not value else _check_postgres_url(value, "MIGRATIONS_DATABASE_URL")

    @field_validator("auth0_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip()
        if not value or "/" in value or ":" in value or " " in value:
            raise ValueError("AUTH0_DOMAIN is a host name like your-tenant.us.auth0.com")
        return value

    @field_validator("auth0_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError("AUTH0_BASE_URL must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("auth0_algorithms", mode="before")
    @classmethod
    def _algorithms(cls, value: Any) -> Any:
        return _csv(value)

    @field_validator("auth0_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        # What python-jose can verify with a public key; no HS* (algorithm confusion), no none.
        allowed = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}
        bad = [alg for alg in value if alg not in allowed]
        if bad or not value:
            raise ValueError(f"AUTH0_ALGORITHMS may list only {sorted(allowed)}")
        return value

    @model_validator(mode="after")
    def _pool(self) -> Settings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        return self

    # --- Derived values -------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        """The exact `iss` every token must carry, whatever `AUTH0_BASE_URL` says."""
        return f"https://{self.auth0_domain}/"

    @property
    def tenant_url(self) -> str:
        """Where requests to the tenant go (a local stand-in in development and tests)."""
        return self.auth0_base_url or f"https://{self.auth0_domain}"

    @property
    def jwks_url(self) -> str:
        return f"{self.tenant_url}/.well-known/jwks.json"

    @property
    def owner_database_url(self) -> str:
        return self.migrations_database_url or self.database_url

    def derived_key(self, purpose: str) -> bytes:
        """A key for one purpose (cursor signing, keyed hashes), stable across copies."""
        root = (self.app_secret_key or self.auth0_client_secret).get_secret_value()
        return hmac.new(root.encode(), purpose.encode(), hashlib.sha256).digest()


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, or raise `ConfigError` with one readable line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    missing: list[str] = []
    invalid: list[str] = []
    for error in exc.errors():
        name = str(error["loc"][0]).upper() if error["loc"] else "settings"
        if error["type"] == "missing":
            missing.append(name)
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            invalid.append(f"{name}: {message}")
    parts = []
    if missing:
        parts.append("missing required setting(s): " + ", ".join(missing))
    if invalid:
        parts.append("invalid setting(s): " + "; ".join(invalid))
    return "configuration error: " + "; ".join(parts)
