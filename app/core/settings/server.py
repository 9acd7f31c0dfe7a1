"""How the service is reached and serves: where it listens, its public origin, its secret,
and the hardening of what browsers and proxies see."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from app.core.settings.group import Group
from app.core.settings.values import Port, blank_is_unset, csv, networks

# Where `python -m app serve` listens unless HOST, PORT or the command line say otherwise.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
HSTS_ONE_YEAR = 365 * 86_400
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
# APP_SECRET_KEY is an HMAC key: shorter than this it could be guessed or was typed by hand.
MIN_SECRET_KEY_LENGTH = 32


class ServerSettings(Group):
    host: str = Field(default=DEFAULT_HOST, min_length=1, description="`serve` listens here.")
    port: Port = Field(default=DEFAULT_PORT, description="`serve` (and `dev`) listen here.")
    workers: int = Field(
        default=1, ge=1, le=64, description="Processes `serve` runs (more than 1: a supervisor)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    public_url: str | None = Field(
        default=None,
        description="Where clients reach the service: every absolute URL it writes starts "
        "here, never with a request's Host. Required by `serve`.",
    )
    app_secret_key: SecretStr | None = Field(
        default=None,
        description="Signs pagination cursors and keys the audit log's email hashes; the "
        "service requires it (every copy the same value).",
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    metrics_token: SecretStr | None = Field(
        default=None, description="When set, /metrics needs it as a bearer token."
    )
    cors_allowed_origins: Annotated[list[str], NoDecode] = []
    trusted_proxies: Annotated[list[str], NoDecode] = []
    shutdown_drain_seconds: float = Field(
        default=0.0,
        ge=0,
        le=600,
        description="On SIGTERM, /readyz answers 503 at once and requests are still served "
        "this long (so a load balancer stops sending first); then the copy stops accepting "
        "and finishes what is in flight. 0: stop accepting at once.",
    )
    hsts_seconds: int = Field(
        default=HSTS_ONE_YEAR,
        ge=0,
        description="Strict-Transport-Security max-age; `python -m app dev` sets 0.",
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        local = parts.hostname in LOCAL_HOSTS
        if parts.scheme != "https" and not (parts.scheme == "http" and local):
            raise ValueError("an https URL (http only for localhost)")
        if not parts.netloc or parts.query or parts.fragment or parts.path.strip("/"):
            raise ValueError("an origin like https://app.example.com (no path, query or fragment)")
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("metrics_token", "app_secret_key")
    @classmethod
    def _blank(cls, value: SecretStr | None) -> SecretStr | None:
        return blank_is_unset(value)  # type: ignore[no-any-return]

    @field_validator("app_secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_KEY_LENGTH:
            raise ValueError(
                f"at least {MIN_SECRET_KEY_LENGTH} characters (python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))')"
            )
        return value

    def missing_in_service(self) -> list[str]:
        # Not required by the field itself: `dev` loads this group alone for PORT and makes
        # its own key.
        return [] if self.app_secret_key is not None else ["APP_SECRET_KEY"]

    @field_validator("cors_allowed_origins", "trusted_proxies", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return csv(value)

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
        return networks(value, "TRUSTED_PROXIES")
