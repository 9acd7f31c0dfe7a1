"""The audit log's signed digests of its chain heads (docs/audit.md)."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from app.core.settings.group import Group
from app.core.settings.values import parse_signing_keys


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

    @field_validator("signing_key")
    @classmethod
    def _signing_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        text = value.get_secret_value().strip() if value is not None else ""
        if not text:
            if info.data.get("digests"):
                raise ValueError("required when AUDIT_DIGESTS is on (KID:SEED, docs/audit.md)")
            return None
        parse_signing_keys(text)  # a readable ValueError that never quotes the key
        return SecretStr(text)
