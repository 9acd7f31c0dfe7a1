"""A DPoP proof's public key (app/auth/dpop.py): its RFC 7638 thumbprint, its import from
the proof's JWK (through authlib's JOSE, once per key) and the signature check, done with
`cryptography` directly: ES256's raw r||s as the DER OpenSSL takes, RS256 with PKCS#1
v1.5, EdDSA (Ed25519) as it is."""

from __future__ import annotations

import base64
import hashlib
import warnings
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ec import ECDSA
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

with warnings.catch_warnings():
    # authlib 1.x announces on import that authlib.jose moves to joserfc in 2.0 (and forces
    # that warning on): pyproject keeps authlib below 2.
    import authlib.deprecate

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.jose import JsonWebSignature

ALGORITHMS = ("ES256", "EdDSA", "RS256")

# The key type (and curve) each algorithm signs with, and the members RFC 7638 hashes.
KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "EdDSA": ("OKP", "Ed25519"),
    "RS256": ("RSA", None),
}
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_ALGORITHM_OBJECTS = {name: JsonWebSignature.ALGORITHMS_REGISTRY[name] for name in ALGORITHMS}
_P256_BYTES = 32
_SHA256 = SHA256()
_ECDSA_SHA256 = ECDSA(_SHA256)
_PKCS1V15 = PKCS1v15()


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 thumbprint of a public JWK (base64url SHA-256 of its required members);
    `ValueError` when it is not an EC, OKP or RSA key with those members."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise ValueError("not a public EC, OKP or RSA key")
    canonical = orjson.dumps({m: jwk[m] for m in members}, option=orjson.OPT_SORT_KEYS)
    return b64url(hashlib.sha256(canonical).digest())


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class PublicKey:
    """A public key loaded once (through authlib's JWK import, which checks its members) and
    checked with `cryptography` directly: ES256's raw r||s signature as the DER that
    OpenSSL takes, RS256 with PKCS#1 v1.5, EdDSA as it is."""

    __slots__ = ("alg", "op_key")

    def __init__(self, alg: str, op_key: Any) -> None:
        self.alg, self.op_key = alg, op_key

    @classmethod
    def load(cls, alg: str, jwk: dict[str, Any]) -> PublicKey:
        """The key of a JWK whose type suits `alg` (checked before); `ValueError` when its
        members make no valid public key."""
        public = {m: jwk[m] for m in _THUMBPRINT_MEMBERS[jwk["kty"]]}
        try:
            imported = _ALGORITHM_OBJECTS[alg].prepare_key(public)
            return cls(alg, imported.get_op_key("verify"))
        except Exception:  # authlib and cryptography refuse bad keys with several types
            raise ValueError("not a valid public key") from None

    def verifies(self, signed: bytes, signature: bytes) -> bool:
        try:
            if self.alg == "ES256":
                if len(signature) != 2 * _P256_BYTES:
                    return False
                r = int.from_bytes(signature[:_P256_BYTES])
                s = int.from_bytes(signature[_P256_BYTES:])
                self.op_key.verify(encode_dss_signature(r, s), signed, _ECDSA_SHA256)
            elif self.alg == "RS256":
                self.op_key.verify(signature, signed, _PKCS1V15, _SHA256)
            else:
                self.op_key.verify(signature, signed)
        except InvalidSignature:
            return False
        return True
