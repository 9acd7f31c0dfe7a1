"""Access-token verification against the tenant's JWKS, returning a `Principal`.

Cheap structural checks (size, shape, base64, JSON, algorithm allow-list, `typ`, `kid`) run on
the raw token before any key is looked up, so garbage never reaches the JWKS. The signature is
checked by python-jose: `Key.verify` on key objects built once per JWKS fetch by
`jwk.construct`. We call the key directly rather than `jws.verify`/`jwt.decode`, which would
parse the token a second time (about 10 us, more than all our own checks); the claim rules
are ours, so each failure gets a description a client can act on ("token expired" means
refresh, "invalid audience" means a misconfigured client).

The JWKS is fetched lazily, kept for min(Cache-Control max-age, JWKS_MAX_AGE_SECONDS),
refetched on an unknown `kid`, one fetch at a time and at most `FETCHES_PER_COOLDOWN` (3)
times in any JWKS_COOLDOWN_SECONDS whatever the traffic. Already verified tokens are remembered in a
bounded LRU keyed by a digest of the token until `exp` minus the leeway.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from jose.backends.base import Key

from app.auth.jwks import MAX_JWKS_BYTES, SUPPORTED_ALGORITHMS, BadJWKS, cache_max_age, parse_jwks
from app.core.errors import Unauthorized, UpstreamUnavailable
from app.core.metrics import JWKS_FETCHES
from app.core.settings import Settings

logger = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8 * 1024
# JWKS fetches allowed in any `jwks_cooldown_seconds` (one at a time). More than one, so a
# token signed with a key the tenant published after our last fetch is verified at once
# (a second rotation soon after a first, or a tenant that does not publish keys ahead);
# few, so a flood of made-up key ids costs the tenant at most this many requests a window.
FETCHES_PER_COOLDOWN = 3
MALFORMED = "malformed token"

# base64url to base64 for a strict decoder; "+", "/" and "=" become "!", which it refuses.
_FROM_URLSAFE = bytes.maketrans(b"-_+/=", b"+/!!!")
_TYPES = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
_LATEST_TIME = 2**53  # the largest integer a JSON number carries exactly
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_METHOD_LENGTH = 64  # an `amr` entry: "pwd", "mfa", "otp", ...
# String claims stored in the database, and their columns' limits: the user id
# (registrations, sign-in sessions), session and token ids (sign-in sessions), the
# organization (Auth0 ids are at most 50), the client, and the email kept at sign-up.
_STORED_CLAIMS = {
    "sub": 255,
    "sid": 255,
    "jti": 255,
    "org_id": 50,
    "azp": 255,
    "client_id": 255,
    "email": 320,
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called, as a verified access token says; immutable and cheap to share."""

    sub: str
    permissions: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    org_id: str | None = None
    client_id: str | None = None
    sid: str | None = None
    jti: str | None = None
    exp: int = 0
    iat: int | None = None
    amr: tuple[str, ...] = ()
    email_verified: bool | None = None
    jkt: str | None = None  # `cnf.jkt`: the token is bound to this DPoP key (app/auth/dpop.py)
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(slots=True)
class _Cached:
    principal: Principal
    kid: str
    valid_until: float


class TokenVerifier:
    """Verifies Auth0 access tokens; one per process, shared by every request.

    `revocation_check(principal) -> True` marks a token as revoked. It is consulted on every
    cache hit and after every fresh verification, so it must be cheap and synchronous.
    `clock` (wall time, for `exp`/`nbf`/`iat`) and `monotonic` (TTL and cooldown) can be
    replaced by tests.
    """

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.http = http
        self.revocation_check: Callable[[Principal], bool] | None = None
        self.jwks_fetch_count = 0
        self._clock = clock
        self._monotonic = monotonic
        self._issuer = settings.auth0.issuer
        self._audience = settings.auth0.audience
        self._leeway = settings.auth.leeway_seconds
        self._max_lifetime = settings.auth.max_token_lifetime_seconds
        self._cooldown = settings.auth.jwks_cooldown_seconds
        self._algorithms = frozenset(settings.auth0.algorithms) & SUPPORTED_ALGORITHMS
        if unsupported := set(settings.auth0.algorithms) - SUPPORTED_ALGORITHMS:
            logger.warning(
                "python-jose cannot verify %s; such tokens are rejected", sorted(unsupported)
            )
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._jwks: dict[str, dict[str, Any]] = {}  # kid -> the JWK as published
        self._keys: dict[str, dict[str, Key]] = {}  # kid -> alg -> prebuilt key object
        self._loaded = False
        self._fresh_until = 0.0
        # When the last fetches started: at most FETCHES_PER_COOLDOWN in any cooldown.
        self._fetches: deque[float] = deque(maxlen=FETCHES_PER_COOLDOWN)
        self._inflight: asyncio.Task[None] | None = None

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are remembered (for metrics)."""
        return len(self._cache)

    async def ready(self) -> bool:
        """True when signing keys are loaded or can be loaded now (for /readyz)."""
        if not self._loaded:
            await self._refresh()
        return self._loaded

    async def verify_access_token(self, token: str) -> Principal:
        """The caller's `Principal`, or `Unauthorized` saying why the token is refused.

        Raises `UpstreamUnavailable` (503) only when no signing keys were ever loaded and
        the tenant cannot be reached: the token may well be good.
        """
        if not isinstance(token, str) or not token.isascii():
            raise Unauthorized(MALFORMED)
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("token too large")
        raw = token.encode()
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        entry = self._cache.get(digest)
        if entry is not None:
            # A stale JWKS sends the token the slow way, which refreshes the keys; that is
            # how a revoked signing key stops tokens verified before it left.
            if entry.valid_until > self._clock() and self._monotonic() < self._fresh_until:
                self._cache.move_to_end(digest)
                self._check_revoked(entry.principal)
                return entry.principal
            del self._cache[digest]
        claims, kid = await self.signed_claims(raw)
        principal = self._principal(claims)
        self._check_revoked(principal)
        valid_until = principal.claims["exp"] - self._leeway
        if self.settings.auth.token_cache_size > 0 and valid_until > self._clock():
            self._cache[digest] = _Cached(principal, kid, valid_until)
            if len(self._cache) > self.settings.auth.token_cache_size:
                self._cache.popitem(last=False)
        return principal

    def _check_revoked(self, principal: Principal) -> None:
        check = self.revocation_check
        if check is not None and check(principal):
            raise Unauthorized("token revoked")

    async def signed_claims(
        self, raw: bytes, types: frozenset[str] = _TYPES
    ) -> tuple[dict[str, Any], str]:
        """A compact JWS's claims and `kid`, once its header passes (an allowed `alg`, a
        `typ` among `types`, no `crit`, a `kid`) and its signature verifies with the tenant's
        key; `Unauthorized` says why not. Access tokens here, and the session part's ID and
        logout tokens (app/session/idtoken.py), which check their own claims."""
        segments = raw.split(b".")
        if len(segments) != 3:
            raise Unauthorized(MALFORMED)
        try:
            header = orjson.loads(b64url_decode(segments[0]))
            claims = orjson.loads(b64url_decode(segments[1]))
            # May be empty: `alg: none` then gets "algorithm not allowed", a clearer answer.
            signature = b64url_decode(segments[2])
        except ValueError:  # binascii.Error and orjson.JSONDecodeError are ValueErrors
            raise Unauthorized(MALFORMED) from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise Unauthorized(MALFORMED)
        alg = header.get("alg")
        # Checked before any key lookup: `none` and HS* never meet the public key.
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise Unauthorized("algorithm not allowed")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in types):
            raise Unauthorized("unsupported token type")
        if "crit" in header:  # RFC 7515 4.1.11: we understand no extensions
            raise Unauthorized("unsupported critical header")
        kid = header.get("kid")
        if kid is None:
            raise Unauthorized("missing key id")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("invalid key id")
        key = await self.signing_key(kid, alg)  # built for exactly this `alg`
        try:
            valid = key.verify(raw[: len(segments[0]) + 1 + len(segments[1])], signature)
        except Exception:  # jose lets some backend errors through; all mean "no"
            valid = False
        if not valid:
            raise Unauthorized("invalid signature")
        return claims, kid

    def _principal(self, claims: dict[str, Any]) -> Principal:
        if claims.get("iss") != self._issuer:
            raise Unauthorized("invalid issuer")
        aud = claims.get("aud")
        if aud != self._audience and not (isinstance(aud, list) and self._audience in aud):
            raise Unauthorized("invalid audience")
        now = self._clock()
        exp = _numeric(claims, "exp")
        if exp is None:
            raise Unauthorized("missing exp claim")
        if now >= exp + self._leeway:
            raise Unauthorized("token expired")
        # Further ahead than any token the tenant issues: it could never be revoked for long
        # enough, and dates that far out are not even representable.
        if exp > now + self._max_lifetime + self._leeway:
            raise Unauthorized("invalid exp claim")
        nbf = _numeric(claims, "nbf")
        if nbf is not None and nbf > now + self._leeway:
            raise Unauthorized("token not yet valid")
        iat = _numeric(claims, "iat")
        if iat is not None and iat > now + self._leeway:
            raise Unauthorized("token issued in the future")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("missing sub claim")
        for name, limit in _STORED_CLAIMS.items():
            _check_fits(claims, name, limit)
        scope = claims.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        permissions = _permissions(claims.get("permissions"))
        # A user may ask for any scope the API defines (RBAC only filters `permissions`);
        # a machine-to-machine client gets only the scopes the tenant admin granted it.
        if claims.get("gty") == "client-credentials":
            permissions |= scopes
        amr = claims.get("amr")
        methods = tuple(a for a in amr if isinstance(a, str)) if isinstance(amr, list) else ()
        if any(len(a) > _MAX_METHOD_LENGTH or _CONTROL.search(a) for a in methods):
            raise Unauthorized("invalid amr claim")  # recorded with each sign-in
        email_verified = claims.get(self.settings.auth0.email_verified_claim)
        cnf = claims.get("cnf")
        if cnf is not None and not (isinstance(cnf, dict) and cnf):
            raise Unauthorized("invalid cnf claim")
        return Principal(
            sub=sub,
            permissions=permissions,
            scopes=scopes,
            org_id=_string(claims.get("org_id")),
            client_id=_string(claims.get("azp")) or _string(claims.get("client_id")),
            sid=_string(claims.get("sid")),
            jti=_string(claims.get("jti")),
            exp=int(exp),
            iat=None if iat is None else int(iat),
            amr=methods,
            email_verified=email_verified if isinstance(email_verified, bool) else None,
            jkt=_string(cnf.get("jkt")) if cnf else None,
            claims=claims,
        )

    async def signing_key(self, kid: str, alg: str) -> Key:
        """The tenant's key `kid` for `alg`, from the JWKS cache (fetched when unknown or
        stale): what the bearer path verifies with, and the session part's ID and logout
        tokens too. Unauthorized for an unknown kid; UpstreamUnavailable before any load."""
        if kid not in self._keys or self._monotonic() >= self._fresh_until:
            await self._refresh()
        keys = self._keys.get(kid)
        if keys is None:
            if not self._loaded:
                raise UpstreamUnavailable(
                    "the identity provider's signing keys are unavailable",
                    retry_after=self._retry_after(),
                )
            raise Unauthorized("unknown signing key")
        key = keys.get(alg)
        if key is None:
            raise Unauthorized("signing key does not match algorithm")
        return key

    def _next_fetch_in(self, now: float) -> float:
        """Seconds until a fetch is allowed (0: now)."""
        if len(self._fetches) < FETCHES_PER_COOLDOWN:
            return 0.0
        return max(0.0, self._cooldown - (now - self._fetches[0]))

    def _retry_after(self) -> int:
        return max(1, math.ceil(self._next_fetch_in(self._monotonic())))

    async def _refresh(self) -> None:
        """Fetch the JWKS unless a fetch is running (then wait for it) or cooling down."""
        task = self._inflight
        if task is None:
            now = self._monotonic()
            if self._next_fetch_in(now) > 0:
                return
            self._fetches.append(now)
            # A task, not a lock: a waiter that is cancelled (client gone) does not cancel
            # the fetch the others are waiting for.
            task = self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        await asyncio.shield(task)

    async def _fetch(self) -> None:
        self.jwks_fetch_count += 1
        url = self.settings.auth0.jwks_url
        try:
            response = await self.http.get(
                url,
                headers={"Accept": "application/json"},
                timeout=httpx.Timeout(self.settings.auth0.timeout_seconds),
            )
            if response.status_code != 200:
                raise BadJWKS(f"HTTP {response.status_code}")
            if len(response.content) > MAX_JWKS_BYTES:
                raise BadJWKS("response too large")
            jwks, keys = parse_jwks(response.content, self._algorithms)
        except Exception as exc:  # unreachable or garbage: keep what we know
            reason = str(exc) if isinstance(exc, BadJWKS) else type(exc).__name__
            state = f"keeping {len(self._keys)} known key(s)" if self._loaded else "no keys yet"
            logger.warning("JWKS fetch from %s failed (%s); %s", url, reason, state)
            JWKS_FETCHES.labels(outcome="failed").inc()
            if self._loaded:
                self._fresh_until = self._monotonic() + self._cooldown
            return
        finally:
            self._inflight = None
        JWKS_FETCHES.labels(outcome="ok").inc()
        gone = {kid for kid, old in self._jwks.items() if jwks.get(kid) != old}
        self._jwks, self._keys, self._loaded = jwks, keys, True
        max_age = cache_max_age(response.headers.get("cache-control"))
        ttl = min(self.settings.auth.jwks_max_age_seconds, max_age if max_age is not None else 1e9)
        # Fresher than the cooldown is pointless: we could not refetch sooner anyway.
        self._fresh_until = self._monotonic() + max(ttl, self._cooldown)
        if gone:
            logger.info("signing key(s) %s left the JWKS; their tokens now fail", sorted(gone))
            for digest in [d for d, e in self._cache.items() if e.kid in gone]:
                del self._cache[digest]


def b64url_decode(segment: bytes) -> bytes:
    """Unpadded base64url, strictly: any other byte, padding or impossible length raises."""
    padded = segment.translate(_FROM_URLSAFE) + b"=" * (-len(segment) % 4)
    return binascii.a2b_base64(padded, strict_mode=True)


def _numeric(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int in Python; infinity would make a token that never expires, and a time
    # before 1970 or past 2**53 seconds is no time a tenant writes.
    if type(value) not in (int, float) or not 0 <= value <= _LATEST_TIME:
        raise Unauthorized(f"invalid {name} claim")
    return float(value)


def _permissions(listed: Any) -> frozenset[str]:
    """The `permissions` claim: absent grants nothing; anything but a list of strings is
    refused rather than read as "no permissions", so a broken tenant rule shows."""
    if listed is None:
        return frozenset()
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        raise Unauthorized("invalid permissions claim")
    return frozenset(listed)


def _check_fits(claims: dict[str, Any], name: str, limit: int) -> None:
    """A string claim the service stores must fit its column: at most `limit` characters and
    no control characters (Postgres refuses NUL), else the token is refused before any query."""
    value = claims.get(name)
    if isinstance(value, str) and (len(value) > limit or _CONTROL.search(value)):
        raise Unauthorized(f"invalid {name} claim")


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
