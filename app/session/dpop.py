"""The DPoP key of a cookie session (SESSION_DPOP, RFC 9449 section 5), and the proofs the
service signs with it.

Each session gets a P-256 key of its own at sign-in; the tenant binds the session's tokens
to it (`cnf.jkt`), the key is stored encrypted beside the refresh token (its private JWK
sealed by `TokenBox`), and every request to the token endpoint (the code exchange, each
refresh) carries a fresh proof signed by it. `ProofTransport` adds the proof under authlib,
which has no DPoP of its own, and remembers the nonce the tenant last named
(`DPoP-Nonce`), which the next proof carries.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

with warnings.catch_warnings():
    # authlib 1.x announces on import that authlib.jose moves to joserfc in 2.0 (and forces
    # that warning on): pyproject keeps authlib below 2.
    import authlib.deprecate

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.jose import ECKey, JsonWebSignature

ALGORITHM = "ES256"
_JWS = JsonWebSignature(algorithms=[ALGORITHM])
_PUBLIC_MEMBERS = ("crv", "kty", "x", "y")


class SessionKey:
    """A session's private key; never logged, stored only sealed (`to_json`)."""

    def __init__(self, key: Any) -> None:
        self._key = key
        public = key.as_dict(is_private=False)
        self.public_jwk = {m: public[m] for m in _PUBLIC_MEMBERS}
        self.thumbprint: str = key.thumbprint()

    def __repr__(self) -> str:
        return f"SessionKey({self.thumbprint})"

    @classmethod
    def generate(cls) -> SessionKey:
        return cls(ECKey.generate_key("P-256", is_private=True))

    @classmethod
    def from_json(cls, text: str) -> SessionKey:
        """The key from its private JWK; `ValueError` when it is not an EC P-256 one."""
        try:
            key = ECKey.import_key(orjson.loads(text))
        except Exception:  # a stored value that no longer reads: treated like no key
            raise ValueError("not a stored DPoP key") from None
        if key.tokens.get("crv") != "P-256" or "d" not in key.tokens:
            raise ValueError("not a stored DPoP key")
        return cls(key)

    def to_json(self) -> str:
        """The private JWK, to be sealed."""
        return orjson.dumps(self._key.as_dict(is_private=True)).decode()

    def proof(
        self, method: str, url: str, nonce: str | None = None, *, access_token: str | None = None
    ) -> str:
        """A fresh proof for `method url` (its query and fragment left out); with the
        `access_token` it goes with (a call to a resource server), its hash (`ath`)."""
        claims: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "htm": method,
            "htu": url.split("#", 1)[0].split("?", 1)[0],
            "iat": int(time.time()),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            digest = hashlib.sha256(access_token.encode("ascii")).digest()
            claims["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        header = {"typ": "dpop+jwt", "alg": ALGORITHM, "jwk": self.public_jwk}
        signed: bytes = _JWS.serialize_compact(header, orjson.dumps(claims), self._key)
        return signed.decode()


@dataclass
class TenantNonce:
    """The nonce the tenant's token endpoint last named; one per process."""

    value: str | None = None


class ProofTransport(httpx.AsyncBaseTransport):
    """Sends authlib's requests through the app's shared client with a proof of `key`, and
    remembers any `DPoP-Nonce` the answer names."""

    def __init__(self, client: httpx.AsyncClient, key: SessionKey, nonce: TenantNonce) -> None:
        self._client, self._key, self._nonce = client, key, nonce

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["DPoP"] = self._key.proof(
            request.method, str(request.url), self._nonce.value
        )
        response = await self._client.send(request, stream=True)
        named = response.headers.get("dpop-nonce")
        if named and len(named) <= 512 and named.isascii():
            self._nonce.value = named
        return response
