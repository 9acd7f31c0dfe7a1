"""`Group`: one group of settings, read from the environment (and `.env`) on its own.

A group's environment names are flat (`AUTH0_DOMAIN`, `DATABASE_URL`): the group's
`env_prefix` plus the field's name, or the field's alias where the field's name is shorter
than the variable's. A command that needs one group loads only that group (`Group.load()`).

An empty variable (`NAME=` in `.env` or in `docker run --env-file`) means "not set": the
default applies, or a required setting is reported missing.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.settings.values import ConfigError, describe_validation_error

ENV_FILE = ".env"


class Group(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        hide_input_in_errors=True,  # a rejected value may be a secret
        env_ignore_empty=True,
    )

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of `field` (a field's name or alias), upper case."""
        info = cls.model_fields.get(field)
        if info is None:  # already an alias
            return field.upper()
        if isinstance(info.validation_alias, str):
            return info.validation_alias.upper()
        return (cls.model_config.get("env_prefix", "") + field).upper()

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Every field's environment variable, by field name."""
        return {field: cls.env_name(field) for field in cls.model_fields}

    def missing_in_service(self) -> list[str]:
        """Variables the whole service needs that this group, loaded alone for a command that
        needs less (`dev` reads PORT), may lack."""
        return []

    @classmethod
    def load(cls, **values: Any) -> Self:
        """The group from the environment (and `.env`) with `values` on top, or `ConfigError`
        in one line naming every missing or invalid variable."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, cls.env_name)) from None
