"""A small DPoP client (RFC 9449) for development, the tests and the benchmarks.

`DPoPKey` is a key pair (ES256, EdDSA or RS256) that signs proofs, with overrides so a test
can make every bad variant too. Run as a program it shows DPoP against `python -m app dev`:

    python -m devkit.dpop --tenant http://127.0.0.1:8001 http://127.0.0.1:8000/api/me

It makes a key, asks the stand-in tenant's `/dev/token` for an access token bound to it
(`cnf.jkt`), signs a proof for the request and sends it with `Authorization: DPoP`,
answering a `use_dpop_nonce` challenge once. `--curl` prints a `curl` line instead (good
once, within the proof's time window: a proof is never accepted twice).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shlex
import sys
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

with warnings.catch_warnings():
    import authlib.deprecate

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.jose import ECKey, JsonWebSignature, OKPKey, RSAKey

_JWS = JsonWebSignature(algorithms=["ES256", "EdDSA", "RS256"])
_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def ath(access_token: str) -> str:
    """A proof's `ath` for this access token."""
    return b64url(hashlib.sha256(access_token.encode()).digest())


@dataclass
class DPoPKey:
    """A client's DPoP key pair; `proof(...)` signs one proof with it."""

    alg: str
    key: Any  # authlib's private key

    @classmethod
    def generate(cls, alg: str = "ES256") -> DPoPKey:
        if alg == "ES256":
            return cls(alg, ECKey.generate_key("P-256", is_private=True))
        if alg == "EdDSA":
            return cls(alg, OKPKey.generate_key("Ed25519", is_private=True))
        if alg == "RS256":
            return cls(alg, RSAKey.generate_key(2048, is_private=True))
        raise ValueError(f"no DPoP key for {alg}")

    @property
    def public_jwk(self) -> dict[str, str]:
        public: dict[str, str] = self.key.as_dict(is_private=False)
        return {k: v for k, v in public.items() if k in _MEMBERS[public["kty"]]}

    @property
    def private_jwk(self) -> dict[str, str]:
        found: dict[str, str] = self.key.as_dict(is_private=True)
        return found

    @property
    def thumbprint(self) -> str:
        """RFC 7638: what a bound token's `cnf.jkt` holds."""
        jwk = self.public_jwk
        canonical = orjson.dumps(
            {m: jwk[m] for m in _MEMBERS[jwk["kty"]]}, option=orjson.OPT_SORT_KEYS
        )
        return b64url(hashlib.sha256(canonical).digest())

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        iat: float | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
    ) -> str:
        """A proof for `method url`; `header` and `claims` override or (as None) drop
        members, for the bad variants a test wants."""
        head: dict[str, Any] = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.public_jwk}
        body: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "htm": method,
            "htu": url,
            "iat": int(time.time() if iat is None else iat),
        }
        if access_token is not None:
            body["ath"] = ath(access_token)
        if nonce is not None:
            body["nonce"] = nonce
        head = {k: v for k, v in {**head, **(header or {})}.items() if v is not None}
        body = {k: v for k, v in {**body, **(claims or {})}.items() if v is not None}
        signed: bytes = _JWS.serialize_compact(head, orjson.dumps(body), self.key)
        return signed.decode()


def _target(url: str) -> str:
    """A proof's `htu`: the URL without its query and fragment."""
    return url.split("#", 1)[0].split("?", 1)[0]


def send(
    http: httpx.Client, method: str, url: str, key: DPoPKey, token: str, nonce: str | None = None
) -> httpx.Response:
    """The request with a fresh proof; once more with the nonce a `use_dpop_nonce` names."""
    for _ in range(2):
        proof = key.proof(method, _target(url), access_token=token, nonce=nonce)
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        response = http.request(method, url, headers=headers)
        challenge = response.headers.get("www-authenticate", "")
        if response.status_code != 401 or 'error="use_dpop_nonce"' not in challenge:
            return response
        nonce = response.headers.get("dpop-nonce")
    return response


def bound_token(http: httpx.Client, tenant: str, key: DPoPKey, sub: str) -> str:
    """An access token for `sub` bound to `key`, from the stand-in tenant's `/dev/token`."""
    answer = http.post(f"{tenant}/dev/token", json={"sub": sub, "cnf": {"jkt": key.thumbprint}})
    answer.raise_for_status()
    token: str = answer.json()["access_token"]
    return token


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.dpop", description=__doc__.split("\n")[0]
    )
    parser.add_argument("url", help="the service's URL to call, e.g. http://127.0.0.1:8000/api/me")
    parser.add_argument("--tenant", required=True, help="the stand-in tenant's URL")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--sub", default="auth0|dev-user")
    parser.add_argument("--alg", default="ES256", choices=["ES256", "EdDSA", "RS256"])
    parser.add_argument("--curl", action="store_true", help="print a curl line instead")
    args = parser.parse_args(argv)
    key = DPoPKey.generate(args.alg)
    with httpx.Client(timeout=10) as http:
        token = bound_token(http, args.tenant.rstrip("/"), key, args.sub)
        if args.curl:
            proof = key.proof(args.method, _target(args.url), access_token=token)
            print(
                f"curl -X {args.method} -H {shlex.quote('Authorization: DPoP ' + token)} "
                f"-H {shlex.quote('DPoP: ' + proof)} {shlex.quote(args.url)}"
            )
            return 0
        response = send(http, args.method.upper(), args.url, key, token)
    print(f"HTTP {response.status_code}  (DPoP, key {args.alg} {key.thumbprint})")
    print(response.text)
    return 0 if response.status_code < 400 else 1


if __name__ == "__main__":
    sys.exit(main())
