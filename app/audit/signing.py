"""Signed digests of the audit chain heads: their payload, the Ed25519 keys, the compact JWS.

A digest is a compact JWS (RFC 7515) with header `{"alg": "EdDSA", "kid": ...}` (RFC 8037)
whose payload is a JSON object:

    v           2 (1: digests from before scopes were named by a keyed hash)
    number      the digest's place in the chain of digests (1, 2, ...)
    issued_at   when it was signed (RFC 3339, UTC, microseconds)
    prev_hash   hex SHA-256 of the previous digest's compact JWS text; null for number 1
    after_seq   the previous digest's `watermark` (0 for the first)
    watermark   every event with seq <= watermark was committed, or never will be
    scope_key   (v2) the id of the AUDIT_SCOPE_KEY entry that named the scopes
    heads       for each scope with events in (after_seq, watermark]: its chain's last event
                there, as {"scope_hash", "last_seq", "last_hash"} (hex), sorted by scope_hash

`scope_hash` is, in v2, hex HMAC-SHA-256 under the scope key of `bff-audit-scope/v2:` and
the scope's name; in v1 it was hex SHA-256 of `bff-audit-scope/v1:` and the name, which
anyone who guesses a name can compute. Digests are served to every tenant's auditors: each
is told its own scope's name (`your_scope`) and learns nothing of the others'
(docs/audit.md).

The JOSE work is authlib's (`authlib.jose`: JsonWebSignature, OKPKey, JsonWebKey). This
module is pure, no database and no HTTP: the service signs with it (app/audit/digests.py)
and the offline verifier (app/audit/offline.py) checks with it, so both read digests alike.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.core.settings.values import (
    AUDIT_KEY_ID,
    parse_public_keys,
    parse_scope_keys,
    parse_signing_keys,
)

with warnings.catch_warnings():
    # authlib 1.x announces on import that authlib.jose moves to joserfc in 2.0 (and forces
    # that warning on): pyproject keeps authlib below 2.
    import authlib.deprecate

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.jose import JsonWebKey, JsonWebSignature, OKPKey
    from authlib.jose.errors import JoseError

DIGEST_VERSION = 2  # what the issuer signs; the verifier reads version 1 too
ALGORITHM = "EdDSA"
SCOPE_DOMAIN = b"bff-audit-scope/v1:"
KEYED_SCOPE_DOMAIN = b"bff-audit-scope/v2:"
_HEX32 = re.compile(r"[0-9a-f]{64}")
_JWS = JsonWebSignature(algorithms=[ALGORITHM])


def scope_hash(scope: str) -> str:
    """How a version 1 digest named a scope: hex SHA-256 of the domain tag and the name."""
    return hashlib.sha256(SCOPE_DOMAIN + scope.encode()).hexdigest()


class ScopeNames:
    """How digests name scopes (`AUDIT_SCOPE_KEY`): hex HMAC-SHA-256 under a scope key, so
    that only the service can tell which scope a head is. The first key names the scopes of
    new digests; the others still tell a caller its scope's name in the digests they named."""

    def __init__(self, keys: Iterable[tuple[str, bytes]]) -> None:
        self._keys = dict(keys)
        if not self._keys:
            raise ValueError("scope names need at least one key")
        self.key_id: str = next(iter(self._keys))

    @classmethod
    def from_setting(cls, text: str) -> ScopeNames:
        """From `AUDIT_SCOPE_KEY`'s value (already checked by the settings)."""
        return cls(parse_scope_keys(text))

    def __repr__(self) -> str:  # never a key
        return f"ScopeNames(key_id={self.key_id!r}, keys={len(self._keys)})"

    def current(self, scope: str) -> str:
        """`scope`'s name in the digests signed now."""
        return self._keyed(self._keys[self.key_id], scope)

    def name(self, scope: str, key_id: str | None) -> str | None:
        """`scope`'s name in a digest that named scopes with `key_id` (None: version 1,
        unkeyed); None when that key is not configured any more."""
        if key_id is None:
            return scope_hash(scope)
        key = self._keys.get(key_id)
        return self._keyed(key, scope) if key is not None else None

    @staticmethod
    def _keyed(key: bytes, scope: str) -> str:
        return hmac.new(key, KEYED_SCOPE_DOMAIN + scope.encode(), hashlib.sha256).hexdigest()


def scope_key_of(jws: str) -> str | None:
    """The `scope_key` a stored digest's payload names (None: version 1), read without
    checking the signature: only to tell a caller its scope's name in that digest."""
    try:
        segment = jws.split(".")[1]
        body = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (IndexError, ValueError):
        return None
    key_id = body.get("scope_key") if isinstance(body, dict) else None
    return key_id if isinstance(key_id, str) else None


def jws_hash(jws: str) -> bytes:
    """SHA-256 of a digest's compact JWS text: what the next digest's `prev_hash` names."""
    return hashlib.sha256(jws.encode("ascii")).digest()


def public_jwk(key: Any) -> dict[str, str]:
    """The public half of an Ed25519 key as a JWK, exactly as the JWKS serves it."""
    jwk = key.as_dict(is_private=False)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": str(jwk["x"]),
        "kid": str(jwk["kid"]),
        "use": "sig",
        "alg": ALGORITHM,
    }


@dataclass(frozen=True, slots=True)
class Head:
    """A scope's chain head as a digest signs it."""

    scope_hash: str
    last_seq: int
    last_hash: bytes


@dataclass(frozen=True, slots=True)
class Digest:
    """A digest's payload, and (once signed or read) its kid and the hash of its JWS."""

    number: int
    issued_at: datetime
    prev_hash: bytes | None
    after_seq: int
    watermark: int
    heads: tuple[Head, ...]
    scope_key: str | None = None  # None: version 1, scopes named by an unkeyed hash
    kid: str = ""
    hash: bytes = b""

    def payload(self) -> bytes:
        """The canonical JSON that is signed: sorted keys, no spaces."""
        body: dict[str, Any] = {
            "v": DIGEST_VERSION if self.scope_key is not None else 1,
            "number": self.number,
            "issued_at": self.issued_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "prev_hash": self.prev_hash.hex() if self.prev_hash is not None else None,
            "after_seq": self.after_seq,
            "watermark": self.watermark,
            "heads": [
                {"scope_hash": h.scope_hash, "last_seq": h.last_seq, "last_hash": h.last_hash.hex()}
                for h in sorted(self.heads, key=lambda h: h.scope_hash)
            ],
        }
        if self.scope_key is not None:
            body["scope_key"] = self.scope_key
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def heads_of(
    rows: Iterable[tuple[str, int, bytes]], name: Callable[[str], str] = scope_hash
) -> tuple[Head, ...]:
    """Heads from (scope, last_seq, last_hash) rows, each scope named by `name`."""
    return tuple(Head(name(scope), seq, hash_) for scope, seq, hash_ in rows)


def retired_public_keys(text: str | None) -> tuple[dict[str, str], ...]:
    """`AUDIT_RETIRED_KEYS`'s keys (already checked by the settings) as public JWKs."""
    if not text:
        return ()
    return tuple(
        public_jwk(OKPKey.import_key(Ed25519PublicKey.from_public_bytes(x), {"kid": kid}))
        for kid, x in parse_public_keys(text)
    )


class KeyRing:
    """The configured keys: `AUDIT_SIGNING_KEY`'s (the first signs, all are published) and
    `AUDIT_RETIRED_KEYS`' public ones (published). Only these check the digests the issuer
    continues: it never chains onto a digest signed by any other key."""

    def __init__(
        self, keys: Iterable[tuple[str, bytes]], retired: Iterable[dict[str, str]] = ()
    ) -> None:
        imported = [
            OKPKey.import_key(Ed25519PrivateKey.from_private_bytes(seed), {"kid": kid})
            for kid, seed in keys
        ]
        if not imported:
            raise ValueError("a key ring needs at least one key")
        self._signer = imported[0]
        self.kid: str = str(self._signer.kid)
        self.public: tuple[dict[str, str], ...] = tuple(public_jwk(k) for k in imported)
        self.published: tuple[dict[str, str], ...] = (*self.public, *retired)
        self.verifiers: dict[str, Any] = load_public_keys({"keys": list(self.published)})

    @classmethod
    def from_setting(cls, text: str, retired: str | None = None) -> KeyRing:
        """From `AUDIT_SIGNING_KEY`'s and `AUDIT_RETIRED_KEYS`' values (already checked by
        the settings)."""
        return cls(parse_signing_keys(text), retired_public_keys(retired))

    @property
    def signer_jwk(self) -> dict[str, str]:
        return self.public[0]

    def __repr__(self) -> str:  # never the private key
        return f"KeyRing(kid={self.kid!r}, keys={len(self.public)})"

    def sign_bytes(self, message: bytes) -> bytes:
        """A raw Ed25519 signature of `message` by the signing key (checkpoint notes)."""
        signature: bytes = self._signer.get_private_key().sign(message)
        return signature

    def sign(self, digest: Digest) -> str:
        """The digest as a compact JWS signed by the signing key."""
        header = {"alg": ALGORITHM, "kid": self.kid}
        token = _JWS.serialize_compact(header, digest.payload(), self._signer)
        return bytes(token).decode("ascii")


class KeysInvalid(ValueError):
    """A JWKS that cannot be used to check digests; the message says which key and why."""


class DigestInvalid(ValueError):
    """A digest that is not well formed or whose signature does not hold."""


def load_public_keys(jwks: Any) -> dict[str, Any]:
    """The Ed25519 keys of a JWKS (`{"keys": [...]}`) by kid; anything else is refused."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise KeysInvalid('not a JWKS: expected {"keys": [...]}')
    keys: dict[str, Any] = {}
    for position, jwk in enumerate(jwks["keys"], 1):
        if not isinstance(jwk, dict):
            raise KeysInvalid(f"key {position}: not a JSON object")
        kid, x = jwk.get("kid"), jwk.get("x")
        if (jwk.get("kty"), jwk.get("crv")) != ("OKP", "Ed25519"):
            raise KeysInvalid(f"key {position}: not an Ed25519 key (kty OKP, crv Ed25519)")
        if not isinstance(kid, str) or not kid or not isinstance(x, str):
            raise KeysInvalid(f"key {position}: needs a kid and x")
        if kid in keys:
            raise KeysInvalid(f"key {position}: kid {kid[:64]!r} appears twice")
        try:
            key = JsonWebKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid})
            raw = key.get_public_key().public_bytes_raw()
        except (JoseError, ValueError, TypeError) as exc:
            raise KeysInvalid(f"key {position}: x is not an Ed25519 public key") from exc
        if len(raw) != 32:
            raise KeysInvalid(f"key {position}: x is not an Ed25519 public key")
        keys[kid] = key
    return keys


class _UnknownKey(Exception):
    pass


def verify_digest(jws: str, keys: Mapping[str, Any]) -> Digest:
    """Check a digest's signature with `keys` (by its kid) and read its payload strictly."""
    if not isinstance(jws, str) or not jws.isascii() or jws.count(".") != 2:
        raise DigestInvalid("not a compact JWS")
    found: dict[str, str] = {}

    def resolve(header: Mapping[str, Any], payload: Any) -> Any:
        kid = header.get("kid")
        if not isinstance(kid, str) or kid not in keys:
            found["kid"] = str(kid)[:64]
            raise _UnknownKey
        return keys[kid]

    try:
        signed = _JWS.deserialize_compact(jws, resolve)
    except _UnknownKey:
        raise DigestInvalid(f"signed with an unknown key (kid {found['kid']!r})") from None
    except JoseError as exc:
        raise DigestInvalid(f"the signature does not hold ({exc.error})") from None
    except (ValueError, TypeError, KeyError):
        raise DigestInvalid("not a compact JWS") from None
    header = cast(Mapping[str, Any], signed.header)
    if header.get("alg") != ALGORITHM:
        raise DigestInvalid("not signed with EdDSA")
    try:
        body = orjson.loads(signed.payload)
    except orjson.JSONDecodeError:
        raise DigestInvalid("the payload is not JSON") from None
    return replace(_read_payload(body), kid=str(header["kid"]), hash=jws_hash(jws))


def _count(value: Any, name: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise DigestInvalid(f"payload: {name} must be an integer >= {minimum}")
    return value


def _hex32(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise DigestInvalid(f"payload: {name} must be 64 lower-case hex digits")
    return bytes.fromhex(value)


def _read_payload(body: Any) -> Digest:
    if not isinstance(body, dict) or body.get("v") not in (1, DIGEST_VERSION):
        raise DigestInvalid(f"payload: not a version 1 or {DIGEST_VERSION} audit digest")
    scope_key = body.get("scope_key")
    if body["v"] == 1 and "scope_key" in body:
        raise DigestInvalid("payload: a version 1 digest has no scope_key")
    if body["v"] != 1 and not (isinstance(scope_key, str) and AUDIT_KEY_ID.fullmatch(scope_key)):
        raise DigestInvalid("payload: scope_key must name the key that named the scopes")
    number = _count(body.get("number"), "number", 1)
    try:
        issued_at = datetime.fromisoformat(body["issued_at"])
    except (KeyError, TypeError, ValueError):
        raise DigestInvalid("payload: issued_at must be an RFC 3339 time") from None
    if issued_at.tzinfo is None:
        raise DigestInvalid("payload: issued_at must carry a time zone")
    prev = body.get("prev_hash")
    prev_hash = None if prev is None else _hex32(prev, "prev_hash")
    if (number == 1) != (prev_hash is None):
        raise DigestInvalid("payload: prev_hash is null for the first digest only")
    after_seq = _count(body.get("after_seq"), "after_seq")
    watermark = _count(body.get("watermark"), "watermark", after_seq)
    if not isinstance(body.get("heads"), list):
        raise DigestInvalid("payload: heads must be a list")
    heads: list[Head] = []
    for entry in body["heads"]:
        if not isinstance(entry, dict):
            raise DigestInvalid("payload: every head must be an object")
        seq = _count(entry.get("last_seq"), "last_seq", after_seq + 1)
        if seq > watermark:
            raise DigestInvalid("payload: a head lies beyond the watermark")
        name = entry.get("scope_hash")
        if not isinstance(name, str) or not _HEX32.fullmatch(name):
            raise DigestInvalid("payload: scope_hash must be 64 lower-case hex digits")
        heads.append(Head(name, seq, _hex32(entry.get("last_hash"), "last_hash")))
    if len({h.scope_hash for h in heads}) != len(heads):
        raise DigestInvalid("payload: a scope appears twice")
    return Digest(number, issued_at, prev_hash, after_seq, watermark, tuple(heads), scope_key)
