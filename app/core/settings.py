"""Configuration: read once from the environment (and `.env`), validated at start-up.

Required values have no default, so a missing one stops start-up with a line naming it.
Secrets are `SecretStr`: they print as `**********` in reprs, logs and tracebacks.

Past 300 lines because every setting is declared here, once, with its validation (STYLE:
configuration once); nothing else reads the environment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}
# Where `python -m app serve` listens unless HOST, PORT or the command line say otherwise.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
Port = Annotated[int, Field(ge=1, le=65535)]


def _directory(path: Path | None) -> Path | None:
    if path is not None and not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    return path


# An existing directory, or None when unset or empty (`MIGRATIONS_DIR=` as in .env.example).
Directory = Annotated[
    Path | None,
    BeforeValidator(lambda value: value or None),
    AfterValidator(_directory),
]
MAX_TOKEN_LIFETIME = 30 * 86_400  # Auth0's longest access-token lifetime
HSTS_ONE_YEAR = 365 * 86_400
# An Auth0 role id, as the Management API writes it.
ROLE_ID = re.compile(r"rol_[A-Za-z0-9]{1,64}")
# An audit signing key's id (the JWS `kid`), and its private half in base64url.
AUDIT_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
SESSION_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


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


def parse_signing_keys(text: str) -> list[tuple[str, bytes]]:
    """`AUDIT_SIGNING_KEY`: `KID:SEED[,KID:SEED...]` as (kid, 32-byte Ed25519 private key)
    pairs, the signing key first. A mistake names the entry and its kid, never key bytes."""
    keys: list[tuple[str, bytes]] = []
    for position, entry in enumerate(text.split(","), 1):
        kid, colon, seed = entry.strip().partition(":")
        seed = seed.rstrip("=")
        if not colon or not AUDIT_KEY_ID.fullmatch(kid):
            raise ValueError(f"entry {position} is not KID:SEED (KID: 1-64 of A-Z a-z 0-9 . _ -)")
        raw = b""
        if _BASE64URL.fullmatch(seed):
            try:
                raw = base64.urlsafe_b64decode(seed + "=" * (-len(seed) % 4))
            except (binascii.Error, ValueError):
                raw = b""
        if len(raw) != 32:
            raise ValueError(f"key {kid}: SEED must be a 32-byte Ed25519 private key in base64url")
        if any(kid == known for known, _ in keys):
            raise ValueError(f"key id {kid} is listed twice")
        keys.append((kid, raw))
    return keys


def parse_fernet_keys(text: str) -> list[bytes]:
    """`SESSION_ENCRYPTION_KEY`: Fernet keys (32 bytes, urlsafe base64), comma-separated, the
    encrypting key first. A mistake names the entry's position, never key bytes."""
    keys: list[bytes] = []
    for position, entry in enumerate(text.split(","), 1):
        key = entry.strip()
        raw = b""
        if _BASE64URL.fullmatch(key.rstrip("=")):
            try:
                raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
            except (binascii.Error, ValueError):
                raw = b""
        if len(raw) != 32:
            raise ValueError(
                f"entry {position} is not a Fernet key (32 bytes in urlsafe base64; "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())')"
            )
        keys.append(base64.urlsafe_b64encode(raw))
    return keys


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
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # a rejected value may be a secret
    )

    # --- Database -------------------------------------------------------------------------
    database_url: str = Field(description="The application's connection (INSERT/SELECT role).")
    migrations_database_url: str | None = Field(
        default=None, description="The owner role's connection for migrations."
    )
    db_pool_min_size: int = Field(default=2, ge=1, le=100)
    db_pool_max_size: int = Field(default=10, ge=1, le=500)
    db_statement_timeout_ms: int = Field(default=5000, ge=100)
    migrations_dir: Directory = Field(
        default=None, description="The numbered .sql migrations; default: the repository's."
    )

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
    max_token_lifetime_seconds: int = Field(
        default=MAX_TOKEN_LIFETIME,
        ge=60,
        description="A token whose exp is further ahead than this is refused (Auth0's own "
        "maximum access-token lifetime is 30 days).",
    )

    # --- Service --------------------------------------------------------------------------
    app_secret_key: SecretStr | None = Field(
        default=None,
        description="Signs pagination cursors and keys hashes; derived from the client "
        "secret when unset, so every copy of the service agrees.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    metrics_token: SecretStr | None = Field(
        default=None, description="When set, /metrics needs it as a bearer token."
    )
    host: str = Field(default=DEFAULT_HOST, min_length=1, description="`serve` listens here.")
    port: Port = Field(default=DEFAULT_PORT, description="`serve` (and `dev`) listen here.")
    workers: int = Field(
        default=1, ge=1, le=64, description="Processes `serve` runs (more than 1: a supervisor)."
    )

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
    revoked_session_seconds: float = Field(default=MAX_TOKEN_LIFETIME, ge=0)
    auth0_log_id_retention_days: int = Field(default=90, ge=1)
    log_stream_max_items: int = Field(default=1000, ge=1, le=100_000)

    # --- Admin ----------------------------------------------------------------------------
    assignable_roles: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Auth0 role ids the admin endpoints may assign or remove; empty: none.",
    )

    # --- Browser-facing hardening ---------------------------------------------------------
    cors_allowed_origins: Annotated[list[str], NoDecode] = []
    trusted_proxies: Annotated[list[str], NoDecode] = []
    hsts_seconds: int = Field(
        default=HSTS_ONE_YEAR,
        ge=0,
        description="Strict-Transport-Security max-age; `python -m app dev` sets 0.",
    )

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

    # --- Audit digests (app/audit/digests.py, docs/audit.md) ------------------------------
    audit_digests: bool = Field(
        default=False,
        description="Sign a digest of the audit chain heads every "
        "AUDIT_DIGEST_INTERVAL_SECONDS with AUDIT_SIGNING_KEY (`python -m app dev` does).",
    )
    audit_digest_interval_seconds: int = Field(default=300, ge=10, le=86_400)
    audit_signing_key: SecretStr | None = Field(
        default=None,
        validate_default=True,
        description="Ed25519 keys as KID:SEED (SEED: the 32-byte private key in base64url), "
        "comma-separated: the first signs, the others are published for rotation.",
    )

    # --- Cookie sessions (app/session/, docs/sessions.md) -----------------------------------
    session_client_id: str | None = Field(
        default=None,
        description="The Auth0 Regular Web Application of cookie sessions; unset: /auth/* is off.",
    )
    session_client_secret: SecretStr | None = None
    public_url: str | None = Field(
        default=None,
        description="Where browsers reach the service; the callback is {PUBLIC_URL}/auth/callback.",
    )
    session_encryption_key: SecretStr | None = Field(
        default=None,
        description="Fernet keys, comma-separated: the first encrypts the stored tokens, every "
        "one decrypts (rotation).",
    )
    session_idle_seconds: int = Field(default=8 * 3600, ge=60, le=30 * 86_400)
    session_absolute_seconds: int = Field(default=7 * 86_400, ge=300, le=90 * 86_400)

    @field_validator("session_client_id")
    @classmethod
    def _session_client_id(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if not value:
            return None
        if not SESSION_CLIENT_ID.fullmatch(value):
            raise ValueError("an Auth0 client id: 1-128 of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("session_client_secret", "session_encryption_key")
    @classmethod
    def _blank_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("session_encryption_key")
    @classmethod
    def _session_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_fernet_keys(value.get_secret_value())  # a ValueError that never quotes a key
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        local = parts.hostname in {"localhost", "127.0.0.1", "::1"}
        if parts.scheme != "https" and not (parts.scheme == "http" and local):
            raise ValueError("an https URL (http only for localhost)")
        if not parts.netloc or parts.query or parts.fragment or parts.path.strip("/"):
            raise ValueError("an origin like https://app.example.com (no path, query or fragment)")
        return f"{parts.scheme}://{parts.netloc}"

    @model_validator(mode="after")
    def _cookie_sessions(self) -> Settings:
        if self.session_client_id is None:
            return self
        needed = {
            "SESSION_CLIENT_SECRET": self.session_client_secret,
            "PUBLIC_URL": self.public_url,
            "SESSION_ENCRYPTION_KEY": self.session_encryption_key,
        }
        if missing := [name for name, value in needed.items() if value is None]:
            raise ValueError(
                "SESSION_CLIENT_ID turns cookie sessions on, which needs " + ", ".join(missing)
            )
        if self.session_idle_seconds > self.session_absolute_seconds:
            raise ValueError("SESSION_IDLE_SECONDS must not exceed SESSION_ABSOLUTE_SECONDS")
        return self

    @property
    def cookie_sessions(self) -> bool:
        """Whether /auth/* and the session cookie are on (SESSION_CLIENT_ID is set)."""
        return self.session_client_id is not None

    @field_validator("audit_signing_key")
    @classmethod
    def _audit_signing_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        text = value.get_secret_value().strip() if value is not None else ""
        if not text:
            if info.data.get("audit_digests"):
                raise ValueError("required when AUDIT_DIGESTS is on (KID:SEED, docs/audit.md)")
            return None
        parse_signing_keys(text)  # a readable ValueError that never quotes the key
        return SecretStr(text)

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
        "assignable_roles",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _csv(value)

    @field_validator("assignable_roles")
    @classmethod
    def _role_ids(cls, value: list[str]) -> list[str]:
        bad = [role for role in value if not ROLE_ID.fullmatch(role)]
        if bad:
            raise ValueError(f"ASSIGNABLE_ROLES lists Auth0 role ids like rol_0123abcd; got {bad}")
        return list(dict.fromkeys(value))

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

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

    @model_validator(mode="after")
    def _sessions_outlive_tokens(self) -> Settings:
        # A signed-out session's other tokens (another tab, a refresh) stay valid until their
        # exp: forgetting the revocation sooner would let them back in.
        if self.revoked_session_seconds < self.max_token_lifetime_seconds:
            raise ValueError(
                f"REVOKED_SESSION_SECONDS ({self.revoked_session_seconds:g}) must be at least "
                f"MAX_TOKEN_LIFETIME_SECONDS ({self.max_token_lifetime_seconds})"
            )
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
            # A rule across settings (no `loc`) names them in its message.
            invalid.append(f"{name}: {message}" if error["loc"] else message)
    parts = []
    if missing:
        parts.append("missing required setting(s): " + ", ".join(missing))
    if invalid:
        parts.append("invalid setting(s): " + "; ".join(invalid))
    return "configuration error: " + "; ".join(parts)
