"""The audit log's signed digests of its chain heads (docs/audit.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from app.core.settings.group import Group
from app.core.settings.values import parse_public_keys, parse_scope_keys, parse_signing_keys


def _state_file(path: Path | None) -> Path | None:
    if path is not None and (path.is_dir() or not path.parent.is_dir()):
        raise ValueError(f"{path} must name a file in an existing directory")
    return path


# A file the issuer writes (its directory must exist), or None when unset or empty.
StateFile = Annotated[
    Path | None,
    BeforeValidator(lambda value: value or None),
    AfterValidator(_state_file),
]


def _required_when_digests(
    value: SecretStr | None, info: ValidationInfo, form: str
) -> SecretStr | None:
    text = value.get_secret_value().strip() if value is not None else ""
    if not text:
        if info.data.get("digests"):
            raise ValueError(f"required when AUDIT_DIGESTS is on ({form}, docs/audit.md)")
        return None
    return SecretStr(text)


class AuditSettings(Group):
    model_config = SettingsConfigDict(env_prefix="AUDIT_")

    digests: bool = Field(
        default=False,
        description="Sign a digest of the audit chain heads every "
        "AUDIT_DIGEST_INTERVAL_SECONDS with AUDIT_SIGNING_KEY (`python -m app dev` does).",
    )
    digest_interval_seconds: int = Field(default=300, ge=10, le=86_400)
    signing_key: SecretStr | None = Field(
        default=None,
        validate_default=True,
        description="Ed25519 keys as KID:SEED (SEED: the 32-byte private key in base64url), "
        "comma-separated: the first signs, the others are published for rotation.",
    )
    retired_keys: str | None = Field(
        default=None,
        description="Public keys that signed digests still kept and are no longer in "
        "AUDIT_SIGNING_KEY, as KID:X (X: the JWK's x), comma-separated: published, and "
        "trusted when the issuer checks the digests it continues.",
    )
    scope_key: SecretStr | None = Field(
        default=None,
        validate_default=True,
        description="HMAC-SHA-256 keys that name scopes in digests, as ID:SECRET (32 bytes "
        "in base64url), comma-separated: the first names scopes in new digests, the others "
        "tell callers their scope's name in older ones.",
    )
    witness_keys: str | None = Field(
        default=None,
        description="The witnesses whose cosignatures of the checkpoints are accepted, as "
        "NAME:X (X: the witness's Ed25519 public key in base64url), comma-separated.",
    )
    signer_state_file: StateFile = Field(
        default=None,
        description="Where the issuer keeps the last digest it signed or saw, away from the "
        "database; it refuses to sign over a table that does not continue it.",
    )

    @field_validator("signing_key")
    @classmethod
    def _signing_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        checked = _required_when_digests(value, info, "KID:SEED")
        if checked is not None:
            parse_signing_keys(checked.get_secret_value())  # never quotes the key
        return checked

    @field_validator("retired_keys", mode="before")
    @classmethod
    def _retired_keys(cls, value: Any) -> str | None:
        text = value.strip() if isinstance(value, str) else value
        if not text:
            return None
        parse_public_keys(text)
        return str(text)

    @field_validator("witness_keys", mode="before")
    @classmethod
    def _witness_keys(cls, value: Any) -> str | None:
        text = value.strip() if isinstance(value, str) else value
        if not text:
            return None
        parse_public_keys(text)
        return str(text)

    @field_validator("scope_key")
    @classmethod
    def _scope_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        checked = _required_when_digests(value, info, "ID:SECRET")
        if checked is not None:
            parse_scope_keys(checked.get_secret_value())  # never quotes the key
        return checked

    @model_validator(mode="after")
    def _one_kid_one_key(self) -> Self:
        if self.signing_key is None or self.retired_keys is None:
            return self
        signing = {kid for kid, _ in parse_signing_keys(self.signing_key.get_secret_value())}
        for kid, _ in parse_public_keys(self.retired_keys):
            if kid in signing:
                raise ValueError(
                    f"AUDIT_RETIRED_KEYS: key id {kid} is in AUDIT_SIGNING_KEY too "
                    "(a key is retired once it leaves AUDIT_SIGNING_KEY)"
                )
        return self
