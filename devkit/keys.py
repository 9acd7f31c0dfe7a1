"""Signing keys and token minting for the stand-in tenant, the tests and the benchmarks.

`SigningKey` is one RSA key pair that signs RS256 tokens and publishes itself as a JWK;
`TokenMinter` mints access, ID and back-channel logout tokens shaped like Auth0's for one
issuer and audience, and rotates its keys the way Auth0 does. `new_audit_signing_key` and
`new_audit_scope_key` make `AUDIT_SIGNING_KEY` and `AUDIT_SCOPE_KEY` values for the audit
digests. Development only: the production app never imports it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jose import jwt

# Every permission the API checks: what a development token carries unless told otherwise.
ALL_PERMISSIONS = (
    "read:patients",
    "create:patients",
    "update:patients",
    "delete:patients",
    "read:audit_events",
    "read:users",
    "update:users",
)

# The `events` member that makes a JWT an OIDC Back-Channel Logout token.
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_audit_signing_key(kid: str | None = None) -> str:
    """A fresh Ed25519 key as `AUDIT_SIGNING_KEY` takes it: `KID:SEED` (base64url)."""
    seed = ed25519.Ed25519PrivateKey.generate().private_bytes_raw()
    kid = kid or f"dev-{uuid.uuid4().hex[:12]}"
    return f"{kid}:{_b64url(seed)}"


def new_audit_scope_key(key_id: str | None = None) -> str:
    """A fresh scope key as `AUDIT_SCOPE_KEY` takes it: `ID:SECRET` (32 bytes, base64url)."""
    return f"{key_id or 'scope-' + uuid.uuid4().hex[:12]}:{_b64url(secrets.token_bytes(32))}"


def dev_audit_keys(database_url: str) -> tuple[str, str]:
    """`AUDIT_SIGNING_KEY` and `AUDIT_SCOPE_KEY` for `python -m app dev`, derived from its
    database's URL: another run against the same database holds the key that signed its
    last digest (the issuer never continues a digest signed by a key it does not hold) and
    names scopes as before. Development only: a real key is random and kept secret."""
    root = hashlib.sha256(b"bff-dev-audit-keys:" + database_url.encode()).digest()

    def derive(purpose: bytes) -> bytes:
        return hmac.new(root, purpose, hashlib.sha256).digest()

    kid = "dev-" + derive(b"kid").hex()[:12]
    return f"{kid}:{_b64url(derive(b'signing'))}", f"{kid}:{_b64url(derive(b'scope'))}"


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class SigningKey:
    """An RSA key pair that can mint RS256 tokens and describe itself as a JWK."""

    kid: str
    private_pem: bytes
    public_jwk: dict[str, str]

    @classmethod
    def generate(cls, kid: str | None = None, bits: int = 2048) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        numbers = key.public_key().public_numbers()
        kid = kid or uuid.uuid4().hex[:16]
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        jwk = {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }
        return cls(kid=kid, private_pem=pem, public_jwk=jwk)

    def sign(
        self,
        claims: dict[str, Any],
        headers: dict[str, Any] | None = None,
        algorithm: str = "RS256",
    ) -> str:
        hdr = {"kid": self.kid, "typ": "JWT", **(headers or {})}
        return str(jwt.encode(claims, self.private_pem.decode(), algorithm=algorithm, headers=hdr))


@dataclass
class TokenMinter:
    """Mints realistic Auth0 access tokens for one tenant (issuer and audience fixed).

    With a `next_key` it publishes that key before signing with it, as Auth0 does (its JWKS
    always holds the current and the next key); without one, `rotate` signs with a key the
    moment it is published, which verifiers that cache the JWKS only see after a refetch.
    """

    domain: str
    audience: str
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.generate()])
    ttl_seconds: int = 3600
    next_key: SigningKey | None = None

    @property
    def issuer(self) -> str:
        return f"https://{self.domain}/"

    @property
    def current(self) -> SigningKey:
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        published = [*self.keys, *([self.next_key] if self.next_key else [])]
        return {"keys": [k.public_jwk for k in published]}

    def claims(
        self,
        sub: str = "auth0|user-1",
        *,
        permissions: tuple[str, ...] | list[str] = (),
        **extra: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": [self.audience, f"{self.issuer}userinfo"],
            "iat": now,
            "exp": now + self.ttl_seconds,
            "azp": "spa-client-id",
            "scope": "openid profile email " + " ".join(permissions),
            "permissions": list(permissions),
            "sid": uuid.uuid4().hex,
            "jti": uuid.uuid4().hex,
        }
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        sub: str = "auth0|user-1",
        *,
        permissions: tuple[str, ...] | list[str] = (),
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        """A signed token; pass a claim as None to leave it out."""
        return (key or self.current).sign(
            self.claims(sub, permissions=permissions, **extra), headers
        )

    def id_token(
        self,
        sub: str,
        *,
        client_id: str,
        ttl_seconds: int = 36000,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        """An OIDC ID token for `client_id` (Auth0's default lifetime, 10 hours); pass a
        claim (`nonce`, `sid`, `name`, ...) in `extra`, or as None to leave it out."""
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": client_id, "sub": sub, "iat": now}
        claims |= {"exp": now + ttl_seconds, **extra}
        present = {k: v for k, v in claims.items() if v is not None}
        return (key or self.current).sign(present, headers)

    def logout_token(
        self,
        *,
        client_id: str,
        sub: str | None = None,
        sid: str | None = None,
        ttl_seconds: int = 120,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        """An OIDC Back-Channel Logout token (`typ` logout+jwt, the `events` claim, `sub`
        and/or `sid`, a fresh `jti`, never a `nonce`); `extra` claims as None are left out,
        so a test can mint the bad variants too."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": client_id,
            "iat": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
            "sub": sub,
            "sid": sid,
            **extra,
        }
        return (key or self.current).sign(
            {k: v for k, v in claims.items() if v is not None},
            {"typ": "logout+jwt", **(headers or {})},
        )

    def rotate(self, *, announced: bool = True) -> SigningKey:
        """Sign with a new current key; the old one stays in the JWKS until `revoke`d.

        With a `next_key` (and `announced`), that already published key becomes current and
        a new next key is published, as in Auth0; otherwise a key never published before.
        """
        if announced and self.next_key is not None:
            new, self.next_key = self.next_key, SigningKey.generate()
        else:
            new = SigningKey.generate()
        self.keys.insert(0, new)
        return new

    def revoke(self, kid: str) -> None:
        self.keys = [k for k in self.keys if k.kid != kid]
