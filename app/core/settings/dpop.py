"""Sender-constrained access tokens (DPoP, RFC 9449) on the `/api` and `/fhir` routes:
whether proofs are accepted or demanded, their time window, and server nonces
(docs/dpop.md). The service's own cookie-session tokens are bound by SESSION_DPOP."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from app.core.settings.group import Group

DPoPMode = Literal["off", "allowed", "required"]


class DPoPSettings(Group):
    model_config = SettingsConfigDict(env_prefix="DPOP_")

    mode: DPoPMode = Field(
        default="allowed",
        description="off: bearer tokens only; allowed: DPoP or plain bearer; required: DPoP only.",
    )
    iat_leeway_seconds: int = Field(
        default=60,
        ge=1,
        le=600,
        description="A proof is accepted while its iat lies within this many seconds of now, "
        "either side; its jti is remembered across copies for as long.",
    )
    nonce: bool = Field(
        default=False,
        description="Demand a server nonce in every proof (401 use_dpop_nonce + DPoP-Nonce).",
    )
    nonce_seconds: int = Field(
        default=300,
        ge=10,
        le=86_400,
        description="How often the nonce changes; the current and the previous one are accepted.",
    )
