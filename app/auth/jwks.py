"""The tenant's JWKS: which keys we accept, built once per fetch, and how long to keep them."""

from __future__ import annotations

from typing import Any

import orjson
from jose import jwk
from jose.backends.base import Key

MAX_JWKS_BYTES = 256 * 1024
# What python-jose can verify, by JWK key type; EC algorithms are tied to one curve.
_KTY_ALGORITHMS = {"RSA": ("RS256", "RS384", "RS512"), "EC": ("ES256", "ES384", "ES512")}
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
SUPPORTED_ALGORITHMS = frozenset(alg for algs in _KTY_ALGORITHMS.values() for alg in algs)
_MIN_RSA_BITS = 2048


class BadJWKS(Exception):
    """The tenant answered, but not with a JWKS we can use."""


def cache_max_age(cache_control: str | None) -> float | None:
    """Seconds from `Cache-Control` (0 for no-cache/no-store), None when it does not say."""
    for directive in (cache_control or "").lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name in ("no-cache", "no-store"):
            return 0.0
        if name == "max-age" and value.strip().isdigit():
            return float(value.strip())
    return None


def parse_jwks(
    content: bytes, algorithms: frozenset[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Key]]]:
    """Build key objects once per fetch; keys we cannot or should not use are skipped."""
    try:
        document = orjson.loads(content)
    except ValueError:
        raise BadJWKS("not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise BadJWKS("no 'keys' list")
    jwks: dict[str, dict[str, Any]] = {}
    keys: dict[str, dict[str, Key]] = {}
    for item in document["keys"]:
        if not isinstance(item, dict) or "d" in item or item.get("use", "sig") != "sig":
            continue  # private keys and encryption keys have no business here
        kid = item.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        built: dict[str, Key] = {}
        for alg in _KTY_ALGORITHMS.get(str(item.get("kty")), ()):
            if alg not in algorithms or item.get("alg", alg) != alg:
                continue
            if alg in _EC_CURVES and item.get("crv") != _EC_CURVES[alg]:
                continue
            try:
                key = jwk.construct(item, alg)
            except Exception:  # noqa: S112 - a malformed JWK is skipped, not fatal
                continue
            bits = getattr(getattr(key, "prepared_key", None), "key_size", 0)
            if alg.startswith("RS") and bits < _MIN_RSA_BITS:
                continue  # a weak key in the JWKS is an attack or a mistake
            built[alg] = key
        if built:
            jwks[kid], keys[kid] = item, built
    if not keys:
        # An empty or unusable set is far likelier a broken answer than a tenant that
        # revoked every key; keep serving what we know and say so in the log.
        raise BadJWKS("no usable signing keys")
    return jwks, keys
