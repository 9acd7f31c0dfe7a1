"""The kinds of value settings hold, and how a rejected one is told in one line.

Parsers here raise `ValueError` with a message that names the entry and never quotes a key.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError

Port = Annotated[int, Field(ge=1, le=65535)]
_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
# An audit signing key's id (the JWS `kid`).
AUDIT_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ConfigError(ValueError):
    """Start-up configuration is missing or invalid; the message is one line for humans."""


def _directory(path: Path | None) -> Path | None:
    if path is not None and not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    return path


# An existing directory, or None when unset or empty.
Directory = Annotated[
    Path | None,
    BeforeValidator(lambda value: value or None),
    AfterValidator(_directory),
]


def csv(value: Any) -> Any:
    """`a, b,c` as `["a", "b", "c"]`; anything else as it is."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


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


def _base64url_bytes(text: str) -> bytes:
    """The bytes of unpadded (or padded) base64url `text`; b"" when it is not that."""
    text = text.rstrip("=")
    if not _BASE64URL.fullmatch(text):
        return b""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return b""


def _keyed_values(text: str, value: str, what: str) -> list[tuple[str, bytes]]:
    """`KID:VALUE[,KID:VALUE...]` as (kid, 32 bytes) pairs, in order; VALUE is base64url of
    32 bytes (`what`). A mistake names the entry and its kid, never the value."""
    keys: list[tuple[str, bytes]] = []
    for position, entry in enumerate(text.split(","), 1):
        kid, colon, encoded = entry.strip().partition(":")
        if not colon or not AUDIT_KEY_ID.fullmatch(kid):
            raise ValueError(
                f"entry {position} is not KID:{value} (KID: 1-64 of A-Z a-z 0-9 . _ -)"
            )
        if len(_base64url_bytes(encoded)) != 32:
            raise ValueError(f"key {kid}: {value} must be {what} in base64url")
        if any(kid == known for known, _ in keys):
            raise ValueError(f"key id {kid} is listed twice")
        keys.append((kid, _base64url_bytes(encoded)))
    return keys


def parse_signing_keys(text: str) -> list[tuple[str, bytes]]:
    """`AUDIT_SIGNING_KEY`: `KID:SEED[,KID:SEED...]` as (kid, 32-byte Ed25519 private key)
    pairs, the signing key first. A mistake names the entry and its kid, never key bytes."""
    return _keyed_values(text, "SEED", "a 32-byte Ed25519 private key")


def parse_public_keys(text: str) -> list[tuple[str, bytes]]:
    """`AUDIT_RETIRED_KEYS`: `KID:X[,KID:X...]` as (kid, 32-byte Ed25519 public key) pairs;
    X is the JWK's `x`, as `GET /.well-known/audit-keys` served it."""
    return _keyed_values(text, "X", "a 32-byte Ed25519 public key (the JWK's x)")


def parse_scope_keys(text: str) -> list[tuple[str, bytes]]:
    """`AUDIT_SCOPE_KEY`: `ID:SECRET[,ID:SECRET...]` as (id, 32-byte HMAC key) pairs, the key
    that names scopes in new digests first. A mistake never quotes a secret."""
    return _keyed_values(text, "SECRET", "32 random bytes")


def parse_fernet_keys(text: str) -> list[bytes]:
    """`SESSION_ENCRYPTION_KEY`: Fernet keys (32 bytes, urlsafe base64), comma-separated, the
    encrypting key first. A mistake names the entry's position, never key bytes."""
    keys: list[bytes] = []
    for position, entry in enumerate(text.split(","), 1):
        raw = _base64url_bytes(entry.strip())
        if len(raw) != 32:
            raise ValueError(
                f"entry {position} is not a Fernet key (32 bytes in urlsafe base64; "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())')"
            )
        keys.append(base64.urlsafe_b64encode(raw))
    return keys


# libpq's name for "the server that accepts writes": a primary, never a standby.
READ_WRITE = "read-write"
TARGET_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", READ_WRITE, "read-only")


def hosts_of(url: str) -> list[tuple[str, int | None]]:
    """The (host, port) pairs a URL names, in order: `h1:5432,h2,[::1]:5433` is three;
    none when it names no host (a local socket). A `ValueError` names a bad port."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    found: list[tuple[str, int | None]] = []
    for spec in filter(None, netloc.split(",")):
        if spec.startswith("["):
            host, _, rest = spec[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = spec.partition(":")
        port = None
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"{port_text!r} is not a port (1-65535)")
            port = int(port_text)
        found.append((host, port))
    return found


def postgres_url(value: str, name: str) -> str:
    """`value` if it is a postgresql:// URL naming a database, else a `ValueError`. It may
    name several hosts (`postgresql://user@h1:5432,h2:5432/db`, libpq's form), each with a
    valid port, and a `target_session_attrs` libpq knows."""
    parts = urlsplit(value)
    if parts.scheme not in _POSTGRES_SCHEMES:
        raise ValueError(f"{name} must be a postgresql:// URL")
    if not parts.path.strip("/"):
        raise ValueError(f"{name} must name a database (postgresql://user@host:port/dbname)")
    try:
        hosts_of(value)
    except ValueError as exc:
        raise ValueError(f"{name} names a host with a bad port: {exc}") from None
    attrs = dict(parse_qsl(parts.query)).get("target_session_attrs")
    if attrs is not None and attrs not in TARGET_SESSION_ATTRS:
        raise ValueError(
            f"{name}: target_session_attrs must be one of {', '.join(TARGET_SESSION_ATTRS)}"
        )
    return value


def networks(value: list[str], name: str) -> list[str]:
    """`value` if every entry is an IP address or network, else a `ValueError`."""
    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{name}: {network!r} is not an IP address or network") from None
    return value


def blank_is_unset(value: Any) -> Any:
    """An empty (or blank) value as None: `NAME=` in a `.env` file means "not set"."""
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    return value if not isinstance(text, str) or text.strip() else None


def describe(exc: ValidationError, env_name: Any = None) -> tuple[list[str], list[str]]:
    """The missing settings' names and the invalid settings' lines of `exc`; `env_name` maps
    a field (the error's `loc`) to its environment name."""
    missing: list[str] = []
    invalid: list[str] = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else None
        name = (env_name(field) if env_name and field else field or "settings").upper()
        if error["type"] == "missing":
            missing.append(name)
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            # A rule across settings (no `loc`) names them in its message.
            invalid.append(f"{name}: {message}" if field else message)
    return missing, invalid


def one_line(missing: list[str], invalid: list[str]) -> str:
    """The `ConfigError` message for what `describe` found."""
    parts = []
    if missing:
        parts.append("missing required setting(s): " + ", ".join(missing))
    if invalid:
        parts.append("invalid setting(s): " + "; ".join(invalid))
    return "configuration error: " + "; ".join(parts)


def describe_validation_error(exc: ValidationError, env_name: Any = None) -> str:
    """`exc` as one `ConfigError` line."""
    return one_line(*describe(exc, env_name))
