"""The shapes of `/auth/*`: the sign-in request's query, the session and sign-out answers."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

MAX_RETURN_TO = 2048


class LoginQuery(BaseModel):
    """`GET /auth/login`: where to go afterwards and what to ask the tenant for."""

    model_config = ConfigDict(extra="forbid")

    return_to: str = Field(default="/", description="A path on this site, like /patients")
    screen_hint: str | None = Field(default=None, description="`signup` opens the sign-up form")
    organization: str | None = Field(default=None, description="An Auth0 organization id")
    connection: str | None = Field(default=None, description="e.g. google-oauth2")


def relative_path(value: str) -> bool:
    """A path on this site: starts with one `/`, no scheme, host, backslash or control."""
    return (
        0 < len(value) <= MAX_RETURN_TO
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and value.isprintable()
        and " " not in value
    )


class SessionUser(BaseModel):
    sub: str
    name: str | None
    email: str | None
    picture: str | None
    email_verified: bool | None


class SessionInfo(BaseModel):
    user: SessionUser
    idle_expires_at: dt.datetime = Field(description="Ends unless used before then")
    absolute_expires_at: dt.datetime = Field(description="Ends then, used or not")


class LogoutAnswer(BaseModel):
    logout_url: str = Field(description="Send the browser here to end the tenant's session too")
