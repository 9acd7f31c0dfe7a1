"""`Settings`: every group of settings, composed into the one object the app is built from.

Read once, at start-up, from the environment (and `.env`): each group reads its own flat
variables, so `Settings(database_url=..., auth0_domain=...)` takes the variables' names in
lower case too, and a group may be handed over whole (`Settings(auth0=Auth0Settings(...))`).
Required values have no default: a missing one stops start-up with one line naming it.
Secrets are `SecretStr`: they print as `**********` in reprs, logs and tracebacks.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from app.core.settings.account import AccountSettings
from app.core.settings.audit import AuditSettings
from app.core.settings.auth import AuthSettings
from app.core.settings.auth0 import Auth0Settings
from app.core.settings.database import DatabaseSettings
from app.core.settings.dpop import DPoPSettings
from app.core.settings.group import ENV_FILE, Group
from app.core.settings.limits import RateLimitSettings
from app.core.settings.remote import RemoteSettings
from app.core.settings.server import ServerSettings
from app.core.settings.sessions import SessionSettings
from app.core.settings.values import ConfigError, describe, one_line


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    GROUPS: ClassVar[dict[str, type[Group]]] = {
        "server": ServerSettings,
        "database": DatabaseSettings,
        "auth0": Auth0Settings,
        "auth": AuthSettings,
        "dpop": DPoPSettings,
        "account": AccountSettings,
        "rate_limits": RateLimitSettings,
        "audit": AuditSettings,
        "sessions": SessionSettings,
        "remote": RemoteSettings,
    }

    server: ServerSettings
    database: DatabaseSettings
    auth0: Auth0Settings
    auth: AuthSettings
    dpop: DPoPSettings
    account: AccountSettings
    rate_limits: RateLimitSettings
    audit: AuditSettings
    sessions: SessionSettings
    remote: RemoteSettings

    def __init__(self, _env_file: Any = ENV_FILE, **values: Any) -> None:
        """Every group from the environment, with `values` (variables' names in lower case,
        or whole groups by their field name) on top; `ConfigError` names every problem."""
        groups: dict[str, Group] = {}
        missing: list[str] = []
        invalid: list[str] = []
        for name, group in self.GROUPS.items():
            if isinstance(values.get(name), group):
                groups[name] = values.pop(name)
                missing += groups[name].missing_in_service()
                continue
            mine = {
                field: values.pop(env.lower())
                for field, env in group.env_names().items()
                if env.lower() in values
            }
            try:
                groups[name] = group(_env_file=_env_file, **mine)
            except ValidationError as exc:
                found = describe(exc, group.env_name)
                missing += found[0]
                invalid += found[1]
            else:
                missing += groups[name].missing_in_service()
        if values:
            invalid.append("unknown setting(s) " + ", ".join(sorted(v.upper() for v in values)))
        if missing or invalid:
            raise ConfigError(one_line(missing, invalid))
        try:
            super().__init__(**groups)
        except ValidationError as exc:
            raise ConfigError(one_line(*describe(exc))) from None

    @classmethod
    def env_names(cls) -> list[str]:
        """Every environment variable the settings read, in the groups' order."""
        return [env for group in cls.GROUPS.values() for env in group.env_names().values()]

    @model_validator(mode="after")
    def _cookie_sessions(self) -> Self:
        if not self.sessions.enabled:
            return self
        needed = {
            "SESSION_CLIENT_SECRET": self.sessions.client_secret,
            "PUBLIC_URL": self.server.public_url,
            "SESSION_ENCRYPTION_KEY": self.sessions.encryption_key,
        }
        if missing := [name for name, value in needed.items() if value is None]:
            raise ValueError(
                "SESSION_CLIENT_ID turns cookie sessions on, which needs " + ", ".join(missing)
            )
        return self

    def derived_key(self, purpose: str) -> bytes:
        """A key for one purpose (cursor signing, keyed hashes): HMAC-SHA256 of `purpose`
        under APP_SECRET_KEY, so every copy agrees and no other secret's rotation moves it."""
        root = self.server.app_secret_key
        assert root is not None  # Settings are never built without it (missing_in_service)
        return hmac.new(root.get_secret_value().encode(), purpose.encode(), hashlib.sha256).digest()


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, or raise `ConfigError` with one readable line."""
    return Settings(**overrides)
