"""The database: the application's connection, the owner's for migrations, the pool."""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator

from app.core.settings.group import Group
from app.core.settings.values import Directory, postgres_url


class DatabaseSettings(Group):
    url: str = Field(
        validation_alias="DATABASE_URL",
        description="The application's connection (INSERT/SELECT role).",
    )
    migrations_url: str | None = Field(
        default=None,
        validation_alias="MIGRATIONS_DATABASE_URL",
        description="The owner role's connection for migrations.",
    )
    migrations_dir: Directory = Field(
        default=None, description="The numbered .sql migrations; default: the repository's."
    )
    pool_min_size: int = Field(default=2, ge=1, le=100, validation_alias="DB_POOL_MIN_SIZE")
    pool_max_size: int = Field(default=10, ge=1, le=500, validation_alias="DB_POOL_MAX_SIZE")
    statement_timeout_ms: int = Field(
        default=5000, ge=100, validation_alias="DB_STATEMENT_TIMEOUT_MS"
    )
    connect_retry_seconds: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        validation_alias="DB_CONNECT_RETRY_SECONDS",
        description="How long `migrate` and `serve`'s start-up check keep retrying a database "
        "they cannot reach (a failover in progress) before giving up; 0: at once.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return postgres_url(value, "DATABASE_URL")

    @field_validator("migrations_url")
    @classmethod
    def _migrations_url(cls, value: str | None) -> str | None:
        return None if not value else postgres_url(value, "MIGRATIONS_DATABASE_URL")

    @model_validator(mode="after")
    def _pool(self) -> Self:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        return self

    @property
    def owner_url(self) -> str:
        """The connection migrations and other owner-only commands use."""
        return self.migrations_url or self.url
