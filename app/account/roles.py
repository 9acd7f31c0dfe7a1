"""A user's Auth0 roles (seed 002 "User Role Assignment"): the shapes the admin endpoints take
and give, and the Auth0 calls behind them. Auditing and the organization check are the
endpoints' (`app.account.endpoints.admin`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.auth0.management import Auth0Client

# Auth0 user ids are `provider|id` (some ids hold more `|`); printable ASCII, no slash.
USER_ID = re.compile(r"^(?=.*\|)[\x21-\x2e\x30-\x7e]{3,255}$")

RoleId = Annotated[str, Field(pattern=r"^rol_[A-Za-z0-9]{1,64}$")]


class RolesChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[RoleId] = Field(min_length=1, max_length=50)

    @field_validator("roles")
    @classmethod
    def _unique(cls, roles: list[str]) -> list[str]:
        return list(dict.fromkeys(roles))


class Role(BaseModel):
    id: str
    name: str | None
    description: str | None


class UserRoles(BaseModel):
    user_id: str
    roles: list[Role]


def is_user_id(value: str) -> bool:
    """Whether `value` has the shape of an Auth0 user id."""
    return USER_ID.fullmatch(value) is not None


async def user_roles(auth0: Auth0Client, user_id: str) -> dict[str, Any]:
    """The roles assigned directly to the user, as `UserRoles` shows them."""
    roles = await auth0.get_user_roles(user_id)
    return {
        "user_id": user_id,
        "roles": [
            {"id": r.get("id"), "name": r.get("name"), "description": r.get("description")}
            for r in roles
        ],
    }


async def change_roles(
    auth0: Auth0Client, user_id: str, role_ids: Sequence[str], *, assign: bool
) -> None:
    """Assign the roles to the user, or remove them from the user."""
    if assign:
        await auth0.assign_roles(user_id, role_ids)
    else:
        await auth0.remove_roles(user_id, role_ids)
