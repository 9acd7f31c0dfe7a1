"""The account flows: the limits of the emails Auth0 sends on our behalf, the roles admins may
assign, and the Log Streams webhook's batch size."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from app.core.settings.group import Group
from app.core.settings.values import csv

# An Auth0 role id, as the Management API writes it.
ROLE_ID = re.compile(r"rol_[A-Za-z0-9]{1,64}")


class AccountSettings(Group):
    rate_limit_password_reset_ip_count: int = Field(default=20, ge=1)
    rate_limit_password_reset_ip_seconds: float = Field(default=900, gt=0)
    rate_limit_password_reset_email_count: int = Field(default=5, ge=1)
    rate_limit_password_reset_email_seconds: float = Field(default=900, gt=0)
    rate_limit_verification_email_count: int = Field(default=3, ge=1)
    rate_limit_verification_email_seconds: float = Field(default=900, gt=0)
    log_stream_max_items: int = Field(default=1000, ge=1, le=100_000)
    assignable_roles: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Auth0 role ids the admin endpoints may assign or remove; empty: none.",
    )

    @field_validator("assignable_roles", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return csv(value)

    @field_validator("assignable_roles")
    @classmethod
    def _role_ids(cls, value: list[str]) -> list[str]:
        bad = [role for role in value if not ROLE_ID.fullmatch(role)]
        if bad:
            raise ValueError(f"ASSIGNABLE_ROLES lists Auth0 role ids like rol_0123abcd; got {bad}")
        return list(dict.fromkeys(value))
