"""Remote APIs the service forwards to (docs/remote-apis.md): a route table in a TOML or
JSON file named by REMOTE_APIS_FILE, read and checked whole at start-up. A bad entry stops
start-up with one line naming it; the file's values are never secrets (no token, no key).

    [apis.labs]
    upstream = "https://labs.example.org/v1"   # https; plain http only for a loopback host
    methods = ["GET", "POST"]
    token = "user"                             # the token rule (docs/remote-apis.md)
    audience = "https://labs.example.org"      # the API the attached token is for
    scopes = ["read:results"]
    permission = "read:labs"                   # what a caller's token must grant
    timeout_seconds = 10
    max_request_bytes = 1048576
    max_response_bytes = 10485760
    rate_limit = "600/60"                      # per caller (user, else address); off by default

`/remote/labs/results/7` is then forwarded to `https://labs.example.org/v1/results/7`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, cast
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, PrivateAttr, model_validator
from pydantic_settings import SettingsConfigDict

from app.core.settings.group import Group
from app.core.settings.values import Quota

TokenRule = Literal["none", "user", "client", "user_or_client", "user_or_none"]
TOKEN_RULES: tuple[TokenRule, ...] = ("none", "user", "client", "user_or_client", "user_or_none")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_PERMISSION = re.compile(r"[!-~]{1,128}")  # one printable token, as Auth0 names them
_KEYS = frozenset(
    {
        "upstream",
        "methods",
        "token",
        "audience",
        "scopes",
        "permission",
        "timeout_seconds",
        "max_request_bytes",
        "max_response_bytes",
        "rate_limit",
    }
)
MAX_BYTES = 1024**3  # 1 GiB: a cap is a bound, not a wish


@dataclass(frozen=True, slots=True)
class RemoteRoute:
    """One declared remote API: `/remote/{name}/...` forwarded to `upstream`."""

    name: str
    upstream: str  # scheme://host[:port][/base], no trailing slash
    methods: frozenset[str]
    token: TokenRule
    audience: str | None = None  # None: the service's own (AUTH0_AUDIENCE)
    scopes: tuple[str, ...] = ()
    permission: str | None = None
    timeout_seconds: float = 10.0
    max_request_bytes: int = 1024 * 1024
    max_response_bytes: int = 10 * 1024 * 1024
    rate_limit: Quota | None = None

    @property
    def prefix(self) -> str:
        return f"/remote/{self.name}/"

    @property
    def anonymous_allowed(self) -> bool:
        """Whether a caller without credentials may use the route (no permission needed)."""
        return self.permission is None and self.token in ("none", "user_or_none")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _upstream(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("upstream must be a URL")
    parts = urlsplit(value)
    host = parts.hostname or ""
    if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(host)):
        raise ValueError("upstream must be https (plain http only for a loopback host)")
    if not host or parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("upstream must name a host, with no credentials, query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("upstream has a bad port") from None
    if "\\" in parts.path or "//" in parts.path or "%" in parts.path:
        raise ValueError("upstream's path must be plain (no //, backslash or escapes)")
    return value.rstrip("/")


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return cast(list[str], value)


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{what} must be a number from {low:g} to {high:g}")
    return float(value)


def _size(entry: dict[str, Any], key: str, default: int) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BYTES:
        raise ValueError(f"{key} must be a whole number of bytes from 0 to {MAX_BYTES}")
    return value


def parse_route(name: str, entry: Any) -> RemoteRoute:
    """One entry of the table, or a `ValueError` saying what is wrong with it."""
    if not NAME.fullmatch(name):
        raise ValueError("a name is 1-63 of a-z 0-9 _ - (it is the path /remote/NAME/)")
    if not isinstance(entry, dict):
        raise ValueError("must be a table of settings")
    if unknown := sorted(set(entry) - _KEYS):
        raise ValueError(f"unknown key(s) {', '.join(unknown)}")
    if "upstream" not in entry or "token" not in entry:
        raise ValueError("needs upstream and token")
    token = entry["token"]
    if token not in TOKEN_RULES:
        raise ValueError(f"token must be one of {', '.join(TOKEN_RULES)}")
    methods = [m.upper() for m in _strings(entry.get("methods", ["GET"]), "methods")]
    if not methods or set(methods) - METHODS:
        raise ValueError(f"methods must be some of {', '.join(sorted(METHODS))}")
    audience = entry.get("audience")
    if audience is not None and (not isinstance(audience, str) or not audience.strip()):
        raise ValueError("audience must be a non-empty string")
    if audience is None and token in ("client", "user_or_client"):
        raise ValueError(f"token {token} needs an audience (the API the client token is for)")
    scopes = _strings(entry.get("scopes", []), "scopes")
    permission = entry.get("permission")
    if permission is not None and (
        not isinstance(permission, str) or not _PERMISSION.fullmatch(permission)
    ):
        raise ValueError("permission must be one permission's name")
    limit = entry.get("rate_limit", "off")
    if not isinstance(limit, str):
        raise ValueError("rate_limit must be COUNT/SECONDS like 600/60, or off")
    return RemoteRoute(
        name=name,
        upstream=_upstream(entry["upstream"]),
        methods=frozenset(methods),
        token=token,
        audience=audience,
        scopes=tuple(scopes),
        permission=permission,
        timeout_seconds=_number(entry.get("timeout_seconds", 10), "timeout_seconds", 0.1, 300),
        max_request_bytes=_size(entry, "max_request_bytes", 1024**2),
        max_response_bytes=_size(entry, "max_response_bytes", 10 * 1024**2),
        rate_limit=Quota.parse(limit),
    )


def read_table(path: Path) -> tuple[RemoteRoute, ...]:
    """The routes of a `.toml` or `.json` file: `{"apis": {NAME: {...}, ...}}`."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text.decode("utf-8"))
        else:
            raise ValueError(f"{path} must be a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid {path.suffix[1:].upper()} ({exc})") from None
    if not isinstance(data, dict) or set(data) - {"apis"}:
        raise ValueError(f"{path}: the file holds one table, apis")
    apis = data.get("apis", {})
    if not isinstance(apis, dict):
        raise ValueError(f"{path}: apis must be a table of NAME = {{...}}")
    routes = []
    for name, entry in apis.items():
        try:
            routes.append(parse_route(str(name), entry))
        except ValueError as exc:
            raise ValueError(f"entry {name!r}: {exc}") from None
    return tuple(routes)


class RemoteSettings(Group):
    model_config = SettingsConfigDict(env_prefix="REMOTE_")

    apis_file: Annotated[Path | None, BeforeValidator(lambda value: value or None)] = Field(
        default=None,
        description="A TOML or JSON file of remote APIs to forward /remote/NAME/... to "
        "(docs/remote-apis.md); unset: no /remote route.",
    )
    _routes: tuple[RemoteRoute, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _read(self) -> Self:
        if self.apis_file is not None:
            try:
                self._routes = read_table(self.apis_file)
            except ValueError as exc:
                raise ValueError(f"REMOTE_APIS_FILE: {exc}") from None
        return self

    @property
    def routes(self) -> tuple[RemoteRoute, ...]:
        return self._routes
