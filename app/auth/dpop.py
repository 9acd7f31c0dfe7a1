"""DPoP (RFC 9449): the proof that comes with a sender-constrained access token.

A DPoP-bound access token names a key by its RFC 7638 thumbprint (`cnf.jkt`); every request
that presents it (`Authorization: DPoP <token>`) carries a fresh `DPoP` header, a JWT signed
by that key over the request's method and URI, a time, a unique id and a hash of the
token. `DPoPVerifier.check` runs the checks of RFC 9449 section 4.3 and 7.1, cheapest
first, and remembers the proof's `jti` (app/auth/replay.py) only once everything else has
passed, so a refused proof stores nothing:

1. one `DPoP` header of at most 8 KiB (a larger one is refused undecoded);
2. a compact JWS whose header has `typ: dpop+jwt`, an `alg` of ES256, EdDSA (Ed25519) or
   RS256 (2048 bits or more), no `crit`, and a public `jwk` of that type (no private
   member); its signature checked with that key by `cryptography` (ES256's raw r||s as
   DER; the key imported from its JWK once, by authlib);
3. `htm` equal to the request's method, and `htu` equal to the request's URI without its
   query (scheme, host, port and path normalised as RFC 3986 section 6 says; the origin is
   PUBLIC_URL, never a client's header; an `htu` with a query or fragment is refused);
4. `iat` within DPOP_IAT_LEEWAY_SECONDS of now, either side;
5. `ath` equal to base64url(SHA-256(the access token)), and the token's `cnf.jkt` equal to
   the thumbprint of the proof's key;
6. with DPOP_NONCE, a `nonce` this service issued (the current or the previous one);
7. a `jti` no copy of the service has seen within the window.

Key objects are cached per thumbprint (a client signs every proof with the same key), so a
known key costs a dict lookup instead of an import, and an accepted header is remembered by
its encoded segment (a client sends the same one with every proof), so it is not decoded,
checked or hashed again; the normalised `htu` and request URI are remembered too. The
claims, the signature and the `jti` are new in every proof and checked every time. The
checks and the replay write are the request phases `dpop_proof` and `dpop_replay`
(app/core/timings.py).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from app.auth.proofkeys import (
    ALGORITHMS,
    KEY_TYPES,
    PRIVATE_MEMBERS,
    PublicKey,
    b64url,
    thumbprint,
)
from app.auth.replay import ReplayStore
from app.auth.tokens import Principal, b64url_decode
from app.auth.uris import normalize_uri
from app.core.errors import AppError, Unauthorized
from app.core.settings.dpop import DPoPSettings
from app.core.timings import phase

ALGS = " ".join(ALGORITHMS)
MAX_PROOF_BYTES = 8 * 1024
PROOF_TYPE = "dpop+jwt"
KEY_CACHE_SIZE = 10_000
# Remembered headers and URIs are bounded in number and in size (a header or URI longer than
# a client's usual one is checked every time), so no sender can make them grow past a few MiB.
HEADER_CACHE_SIZE = 4_096
MAX_CACHED_HEADER = 1_024
URI_CACHE_SIZE = 1_024
MAX_CACHED_URI = 512
MIN_RSA_BITS = 2048
MAX_JTI_LENGTH = 256


def dpop_challenge(challenge: str) -> str:
    """A `Bearer ...` challenge (RFC 6750) as the `DPoP` challenge of RFC 9449 section 7.1:
    the same realm and error, and the algorithms a proof may use."""
    scheme, _, params = challenge.partition(" ")
    if scheme.lower() != "bearer":
        return challenge
    return f'DPoP algs="{ALGS}", {params}' if params else f'DPoP algs="{ALGS}"'


def as_dpop_refusal(error: AppError) -> None:
    """Turn the error's `Bearer` challenge, if any, into the `DPoP` one."""
    challenge = error.headers.get("WWW-Authenticate")
    if challenge is not None:
        error.headers["WWW-Authenticate"] = dpop_challenge(challenge)


class DPoPRefused(Unauthorized):
    """401 `invalid_dpop_proof`: the proof is missing or not acceptable; `detail` says why."""

    type_name = "invalid-dpop-proof"

    def __init__(self, detail: str, *, error: str = "invalid_dpop_proof") -> None:
        super().__init__(detail, error=error)
        as_dpop_refusal(self)


class NonceRequired(DPoPRefused):
    """401 `use_dpop_nonce` (RFC 9449 section 9): sign the proof again with the nonce in the
    `DPoP-Nonce` header."""

    type_name = "use-dpop-nonce"

    def __init__(self, detail: str, nonce: str) -> None:
        super().__init__(detail, error="use_dpop_nonce")
        self.headers["DPoP-Nonce"] = nonce


def token_refused(detail: str) -> Unauthorized:
    """401 `invalid_token` with the `DPoP` challenge (the token cannot be used as sent)."""
    error = Unauthorized(detail)
    as_dpop_refusal(error)
    return error


# --- Keys, nonces ------------------------------------------------------------------------------


def access_token_hash(token: str) -> str:
    """A proof's `ath`: base64url SHA-256 of the access token's ASCII."""
    return b64url(hashlib.sha256(token.encode()).digest())


class Nonces:
    """Server nonces every copy agrees on without sharing state: an HMAC, under a key all
    copies derive alike, of the number of the current period of `seconds`."""

    def __init__(self, key: bytes, seconds: int, clock: Callable[[], float] = time.time) -> None:
        self._key, self._seconds, self._clock = key, seconds, clock
        self._made: dict[int, str] = {}

    def _nonce(self, period: int) -> str:
        found = self._made.get(period)
        if found is None:
            mac = hmac.new(self._key, b"dpop-nonce:%d" % period, hashlib.sha256).digest()
            found = b64url(mac[:18])
            self._made = {p: n for p, n in self._made.items() if p >= period - 1}
            self._made[period] = found
        return found

    def current(self) -> str:
        return self._nonce(int(self._clock() // self._seconds))

    def accepts(self, nonce: str) -> bool:
        """The current nonce or the previous one."""
        period = int(self._clock() // self._seconds)
        given = nonce.encode()
        return any(
            hmac.compare_digest(given, self._nonce(p).encode()) for p in (period, period - 1)
        )


# --- Proofs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Presented:
    """What a request presents: the Authorization scheme (lower case) and token, its `DPoP`
    headers, its method, its raw path (no query), and the origin the server was reached at
    by its own socket (used only while PUBLIC_URL is unset)."""

    scheme: str
    token: str
    proofs: Sequence[str]
    method: str
    path: str
    local_origin: str


class DPoPVerifier:
    """Checks DPoP proofs for the `requires` decorator; one per process (None when off)."""

    def __init__(
        self,
        settings: DPoPSettings,
        replays: ReplayStore,
        *,
        origin: str | None,
        nonce_key: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.required = settings.mode == "required"
        self.replays = replays
        self.nonces = Nonces(nonce_key, settings.nonce_seconds, clock) if settings.nonce else None
        self._origin = origin
        self._leeway = settings.iat_leeway_seconds
        self._clock = clock
        self._keys: OrderedDict[str, PublicKey] = OrderedDict()  # by thumbprint
        self._headers: OrderedDict[bytes, tuple[str, PublicKey]] = OrderedDict()  # by segment
        self._uris: dict[str, str | None] = {}  # normalize_uri's answers

    def asked_for(self, scheme: str, proofs: Sequence[str]) -> bool:
        """Whether a refusal of this request carries the `DPoP` challenge: in `required`
        mode, or when the request used the DPoP scheme or sent a proof."""
        return self.required or scheme == "dpop" or bool(proofs)

    async def check(self, presented: Presented, principal: Principal) -> str | None:
        """Accept the request's way of presenting this verified token, or raise the 401 that
        says why not. Returns a nonce the response should carry (a newer one), or None."""
        bound = principal.jkt is not None or "cnf" in principal.claims
        if presented.scheme != "dpop":
            if presented.proofs:
                raise token_refused("a DPoP proof came with the Bearer scheme: use DPoP")
            if self.required:
                raise token_refused("this service accepts only DPoP-bound tokens")
            if bound:  # RFC 9449 section 7.1
                raise token_refused("the token is DPoP-bound: send it with the DPoP scheme")
            return None
        if principal.jkt is None:
            raise token_refused("the token is not DPoP-bound (no cnf.jkt)")
        if not presented.proofs:
            raise DPoPRefused("the request has no DPoP proof")
        if len(presented.proofs) > 1:
            raise DPoPRefused("send exactly one DPoP proof")
        with phase("dpop_proof"):
            claims, key = self.verify_proof(presented)
        if not hmac.compare_digest(
            claims["ath"].encode(), access_token_hash(presented.token).encode()
        ):
            raise DPoPRefused("the proof's ath does not match the access token")
        if not hmac.compare_digest(key.encode(), principal.jkt.encode()):
            raise DPoPRefused("the proof's key is not the key the token is bound to")
        fresher = self._check_nonce(claims.get("nonce"))
        until = claims["iat"] + 2 * self._leeway  # covers the other copies' clock skew too
        replay_key = hashlib.sha256(f"dpop/v1\x00{key}\x00{claims['jti']}".encode()).digest()
        with phase("dpop_replay"):
            new = await self.replays.first_use(replay_key, until)
        if not new:
            raise DPoPRefused("the proof was already used (its jti is not new)")
        return fresher

    def verify_proof(self, presented: Presented) -> tuple[dict[str, Any], str]:
        """The proof's claims and its key's thumbprint, once its form, signature, `htm`,
        `htu` and `iat` pass; `DPoPRefused` otherwise."""
        proof = presented.proofs[0]
        if len(proof) > MAX_PROOF_BYTES:
            raise DPoPRefused("the DPoP proof is too large")
        segment, header, claims, signed, signature = _decode(proof, self._headers)
        key_id, key = self._headers[segment] if header is None else self._header(header)
        if not key.verifies(signed, signature):
            raise DPoPRefused("the proof's signature does not verify")
        if header is not None and len(segment) <= MAX_CACHED_HEADER:
            self._headers[segment] = key_id, key  # signed by its key: remembered
            if len(self._headers) > HEADER_CACHE_SIZE:
                self._headers.popitem(last=False)
        self._check_claims(claims, presented)
        return claims, key_id

    def _header(self, header: dict[str, Any]) -> tuple[str, PublicKey]:
        """The thumbprint and key of a proof header not seen before, once it passes its
        checks. `verify_proof` remembers it by its segment once a proof signed with it
        verifies (a client sends the same header every time), so the next proof with it
        skips the decoding, the checks and the thumbprint."""
        if header.get("typ") != PROOF_TYPE:
            raise DPoPRefused("the proof's typ must be dpop+jwt")
        alg = header.get("alg")
        if alg not in KEY_TYPES:
            raise DPoPRefused(f"the proof's alg must be one of {ALGS}")
        if "crit" in header:
            raise DPoPRefused("the proof has a critical header this service does not know")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise DPoPRefused("the proof's header has no jwk")
        if PRIVATE_MEMBERS & jwk.keys():
            raise DPoPRefused("the proof's jwk holds a private key")
        kty, crv = KEY_TYPES[alg]
        if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
            raise DPoPRefused(f"the proof's jwk is not a key for {alg}")
        try:
            key_id = thumbprint(jwk)
        except ValueError:
            raise DPoPRefused("the proof's jwk is not a valid public key") from None
        return key_id, self._key(key_id, alg, jwk)

    def _key(self, key_id: str, alg: str, jwk: dict[str, Any]) -> PublicKey:
        found = self._keys.get(key_id)
        if found is not None:
            self._keys.move_to_end(key_id)
            return found
        try:
            found = PublicKey.load(alg, jwk)
        except ValueError:
            raise DPoPRefused("the proof's jwk is not a valid public key") from None
        if alg == "RS256" and found.op_key.key_size < MIN_RSA_BITS:
            raise DPoPRefused(f"the proof's RSA key is shorter than {MIN_RSA_BITS} bits")
        self._keys[key_id] = found
        if len(self._keys) > KEY_CACHE_SIZE:
            self._keys.popitem(last=False)
        return found

    def _check_claims(self, claims: dict[str, Any], presented: Presented) -> None:
        for name in ("jti", "htm", "htu", "ath"):
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise DPoPRefused(f"the proof has no {name} claim")
        if len(claims["jti"]) > MAX_JTI_LENGTH:
            raise DPoPRefused("the proof's jti is too long")
        if claims["htm"] != presented.method:
            raise DPoPRefused("the proof's htm does not match the request's method")
        htu = self._normalized(claims["htu"])
        if htu is None:
            raise DPoPRefused("the proof's htu is not an http(s) URI without query or fragment")
        if htu != self._normalized((self._origin or presented.local_origin) + presented.path):
            raise DPoPRefused("the proof's htu does not match the request's URI")
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise DPoPRefused("the proof has no iat claim")
        now = self._clock()
        if iat < now - self._leeway:
            raise DPoPRefused("the proof is too old (iat)")
        if iat > now + self._leeway:
            raise DPoPRefused("the proof is issued in the future (iat)")

    def _normalized(self, uri: str) -> str | None:
        """`normalize_uri`, remembered: a client names the same few URIs again and again."""
        try:
            return self._uris[uri]
        except KeyError:
            pass
        found = normalize_uri(uri)
        if len(uri) <= MAX_CACHED_URI:
            if len(self._uris) >= URI_CACHE_SIZE:
                self._uris.clear()
            self._uris[uri] = found
        return found

    def _check_nonce(self, nonce: Any) -> str | None:
        if self.nonces is None:
            return None
        current = self.nonces.current()
        if nonce is None:
            raise NonceRequired("this service requires a nonce in the DPoP proof", current)
        if not isinstance(nonce, str) or not self.nonces.accepts(nonce):
            raise NonceRequired("the proof's nonce is not current", current)
        return None if hmac.compare_digest(nonce.encode(), current.encode()) else current


def _decode(
    proof: str, known_segments: Container[bytes]
) -> tuple[bytes, dict[str, Any] | None, dict[str, Any], bytes, bytes]:
    """The header's segment, the header (None when the segment is one of `known_segments`,
    accepted before: it is not decoded again), the claims, the signing input and the
    signature of a compact JWS, or `DPoPRefused`."""
    if not proof.isascii():
        raise DPoPRefused("the DPoP proof is not a JWT")
    raw = proof.encode()
    segments = raw.split(b".")
    if len(segments) != 3:
        raise DPoPRefused("the DPoP proof is not a JWT")
    try:
        known = segments[0] in known_segments
        header = None if known else orjson.loads(b64url_decode(segments[0]))
        claims = orjson.loads(b64url_decode(segments[1]))
        signature = b64url_decode(segments[2])
    except ValueError:
        raise DPoPRefused("the DPoP proof is not a JWT") from None
    if not (known or isinstance(header, dict)) or not isinstance(claims, dict):
        raise DPoPRefused("the DPoP proof is not a JWT")
    signed = raw[: len(segments[0]) + 1 + len(segments[1])]
    return segments[0], header, claims, signed, signature
