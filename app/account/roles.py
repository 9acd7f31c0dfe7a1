"""A user's Auth0 roles (seed 002 "User Role Assignment"): the shapes the admin endpoints take
and give, the rules on changes, and the Auth0 calls behind them. Auditing and the
organization membership check are the endpoints' (`app.account.endpoints.admin`).

An admin whose token carries `org_id` works on the roles of that organization's members
(`/api/v2/organizations/{org}/members/{user}/roles`), which apply only to logins through
that organization; only an admin without one touches tenant roles. Either way only the
roles listed in ASSIGNABLE_ROLES change hands, and nobody changes their own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.auth0.management import Auth0Client
from app.core.errors import Forbidden
from app.core.settings.account import ROLE_ID

# Auth0 user ids are `provider|id` (some ids hold more `|`); printable ASCII, no slash.
USER_ID = re.compile(r"^(?=.*\|)[\x21-\x2e\x30-\x7e]{3,255}$")

RoleId = Annotated[str, Field(pattern=f"^{ROLE_ID.pattern}$")]
MAX_ROLES = 50


class RolesChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[RoleId] = Field(min_length=1, max_length=MAX_ROLES)

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


def check_change(
    caller_sub: str, user_id: str, role_ids: Sequence[str], assignable: Sequence[str]
) -> None:
    """Refuse (403) a change to the caller's own roles, or to a role not in ASSIGNABLE_ROLES."""
    if user_id == caller_sub:
        raise Forbidden("you cannot change your own roles")
    refused = [role for role in role_ids if role not in assignable]
    if refused:
        which = "role " + refused[0] if len(refused) == 1 else "roles " + ", ".join(refused)
        raise Forbidden(f"the {which} may not be assigned or removed here")


async def user_roles(auth0: Auth0Client, user_id: str, *, org_id: str | None) -> dict[str, Any]:
    """The user's roles, as `UserRoles` shows them: within the organization when `org_id`
    is given, else the tenant roles assigned directly to the user."""
    if org_id is not None:
        roles = await auth0.get_member_roles(org_id, user_id)
    else:
        roles = await auth0.get_user_roles(user_id)
    return {
        "user_id": user_id,
        "roles": [
            {"id": r.get("id"), "name": r.get("name"), "description": r.get("description")}
            for r in roles
        ],
    }


async def change_roles(
    auth0: Auth0Client,
    user_id: str,
    role_ids: Sequence[str],
    *,
    assign: bool,
    org_id: str | None,
) -> None:
    """Assign the roles to the user, or remove them: within the organization when `org_id`
    is given, else tenant-wide."""
    if org_id is not None:
        if assign:
            await auth0.assign_member_roles(org_id, user_id, role_ids)
        else:
            await auth0.remove_member_roles(org_id, user_id, role_ids)
    elif assign:
        await auth0.assign_roles(user_id, role_ids)
    else:
        await auth0.remove_roles(user_id, role_ids)
