"""The shapes of `/auth/*`: the sign-in request's query, the session and sign-out answers."""

from __future__ import annotations

import datetime as dt
import re

from pydantic import BaseModel, ConfigDict, Field

MAX_RETURN_TO = 2048


class LoginQuery(BaseModel):
    """`GET /auth/login`: where to go afterwards and what to ask the tenant for."""

    model_config = ConfigDict(extra="forbid")

    return_to: str = Field(default="/", description="A path on this site, like /patients")
    screen_hint: str | None = Field(default=None, description="`signup` opens the sign-up form")
    organization: str | None = Field(default=None, description="An Auth0 organization id")
    connection: str | None = Field(default=None, description="e.g. google-oauth2")


# In a path, the escapes a parser or a later decoding may act on: dots, slashes, backslashes
# (a slash to WHATWG in http URLs) and controls (a tab or newline is dropped, then `//`).
_MEANINGFUL_ESCAPE = re.compile(r"%(2[eEfF]|5[cC]|[01][0-9a-fA-F]|7[fF])")
_SLASHES = re.compile(r"/{2,}")


def normalise_return_to(value: str) -> str | None:
    """`value` as a path of this site that no parser reads as a network path (`//host`),
    or None when it is none: it must start with one `/` and hold no scheme, host, backslash,
    space or control character. In the path, the escapes of dots, slashes and backslashes
    are decoded (an encoded control refuses the value), runs of slashes become one, and dot
    segments are resolved as WHATWG does (`%2e` is a dot); the query and fragment are kept
    as given."""
    if not (0 < len(value) <= MAX_RETURN_TO and value.startswith("/")):
        return None
    if value.startswith("//") or "\\" in value or " " in value or not value.isprintable():
        return None
    cut = min((i for i in (value.find("?"), value.find("#")) if i >= 0), default=len(value))
    path, rest = value[:cut], value[cut:]
    path = _MEANINGFUL_ESCAPE.sub(lambda m: chr(int(m[1], 16)), path).replace("\\", "/")
    if not path.isprintable():
        return None
    return _without_dot_segments(_SLASHES.sub("/", path)) + rest


def _without_dot_segments(path: str) -> str:
    """`path` (starting with `/`, no empty segment but the last) with `.` and `..` resolved."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment in {".", ".."}:
            if segment == ".." and kept:
                kept.pop()
            if last:
                kept.append("")  # `/a/..` is the directory `/`, not the file `/a`
        else:
            kept.append(segment)
    return "/" + "/".join(kept)


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
