"""The benchmark's data: users spread over scopes, their patients, and their access tokens.

1,000 users, each the only user of one scope: half belong to an Auth0 organisation (the
token carries `org_id`, scope `org:<id>`), half do not (scope `user:<sub>`). Patients are
spread over the scopes unevenly (40 to 160 each for 100,000 in 1,000 scopes), with
realistic names in several scripts, birth dates, identifiers, phones, emails and addresses.
They are bulk-loaded with binary COPY as the owner role; the folded search columns are
filled with the service's own `app.patients.repository.fold`.

Tokens are signed RS256 with the stand-in tenant's key and carry what Auth0 puts in an
access token with RBAC on (permissions, scope, azp, sid, jti, the userinfo audience).
Signing costs about 1.5 ms a token, so large batches are signed in a process pool.
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from app.core.db import asyncpg_dsn
from devkit.keys import SigningKey, TokenMinter

PERMISSIONS = ("read:patients", "create:patients", "update:patients", "delete:patients")
EMAIL_VERIFIED_CLAIM = "https://bff.bench/email_verified"
SPA_CLIENT_ID = "bench-spa-client"
IDENTIFIER_SYSTEM = "https://hospital.example.org/fhir/mrn"

# Several scripts and diacritics on purpose: the service folds them for search.
GIVEN = (  # noqa: SIM905
    "Emma Liam Olivia Noah Sofía Mateo Zoë Jürgen Amélie Søren Aisha Mohammed Yuki Hiroshi "
    "Priya Arjun Chloé Łukasz Ana João Fatima Omar Mei Wei Ingrid Björn Élodie François "
    "Siobhán Seán Nikolai Анна Дмитрий Ελένη Γιώργος Chiara Matteo Lucía Tomás Kwame"
).split()
FAMILY = (  # noqa: SIM905
    "Smith Müller García Nguyễn O'Brien Kowalski Rossi Dubois Janssen Andersson Tanaka Kim "
    "Patel Silva Hernández Öztürk Ivanova Cohen Mbeki Okafor Fernández Schröder Lefèvre "
    "Novák Popescu Jensen Murphy Larsen Costa Yılmaz Иванов Παπαδόπουλος Haddad Nakamura"  # noqa: RUF001
).split()
CITIES = (
    ("Berlin", "DE"),
    ("Lyon", "FR"),
    ("Porto", "PT"),
    ("Springfield", "US"),
    ("Osaka", "JP"),
    ("Kraków", "PL"),
    ("Cork", "IE"),
    ("Lagos", "NG"),
)
PATIENT_COLUMNS = (
    "scope",
    "created_by",
    "identifier_system",
    "identifier_value",
    "given_name",
    "family_name",
    "given_name_folded",
    "family_name_folded",
    "birth_date",
    "gender",
    "phone",
    "email",
    "address",
    "active",
    "version",
    "created_at",
    "updated_at",
)


@dataclass(frozen=True, slots=True)
class User:
    sub: str
    org_id: str | None
    email: str

    @property
    def scope(self) -> str:
        """As `app.audit.events.scope_of` computes it from the token."""
        return f"org:{self.org_id}" if self.org_id else f"user:{self.sub}"


def make_users(count: int, seed: int = 8) -> list[User]:
    rng = random.Random(seed)
    users = []
    for n in range(count):
        sub = f"auth0|{rng.getrandbits(96):024x}"
        org = f"org_{rng.getrandbits(64):016x}" if n % 2 == 0 else None
        users.append(User(sub, org, f"user{n}@bench.example"))
    return users


def _ascii(name: str) -> str:
    return "".join(c for c in name.lower() if c.isascii() and c.isalpha()) or "x"


def patient_records(users: Sequence[User], total: int, seed: int = 8) -> Iterator[tuple[Any, ...]]:
    """COPY records in `PATIENT_COLUMNS` order; every scope gets 40%..160% of its share."""
    from app.patients.repository import fold  # the service's own search form of a name

    rng = random.Random(seed)
    weights = [rng.uniform(0.4, 1.6) for _ in users]
    scale = total / sum(weights)
    counts = [int(w * scale) for w in weights]
    for i in range(total - sum(counts)):
        counts[i % len(counts)] += 1
    now = dt.datetime.now(dt.UTC)
    serial = 0
    for user, count in zip(users, counts, strict=True):
        for _ in range(count):
            serial += 1
            given, family = rng.choice(GIVEN), rng.choice(FAMILY)
            created = now - dt.timedelta(seconds=rng.randrange(3 * 365 * 86400))
            city, country = rng.choice(CITIES)
            address = {
                "line": [f"{rng.randrange(1, 300)} {rng.choice(FAMILY)} Street"],
                "city": city,
                "postal_code": f"{rng.randrange(10000, 99999)}",
                "country": country,
            }
            has_id = rng.random() < 0.95
            yield (
                user.scope,
                user.sub,
                IDENTIFIER_SYSTEM if has_id else None,
                f"MRN{serial:08d}" if has_id else None,
                given,
                family,
                fold(given),
                fold(family),
                dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(34_000)),
                rng.choices(("female", "male", "other", "unknown"), (48, 48, 2, 2))[0],
                f"+1415{rng.randrange(10**7):07d}" if rng.random() < 0.8 else None,
                f"{_ascii(given)}.{_ascii(family)}{serial}@mail.example"
                if rng.random() < 0.7
                else None,
                orjson.dumps(address).decode() if rng.random() < 0.8 else None,
                True,
                1,
                created,
                created,
            )


async def load(owner_url: str, users: Sequence[User], patients: int) -> str:
    """Register every user and COPY the patients in, then VACUUM ANALYZE, as the owner.
    Returns the server's version."""
    conn = await asyncpg.connect(asyncpg_dsn(owner_url))
    try:
        await conn.copy_records_to_table(
            "registrations",
            records=[(u.sub, u.email) for u in users],
            columns=("auth0_user_id", "email"),
        )
        await conn.copy_records_to_table(
            "patients", records=patient_records(users, patients), columns=PATIENT_COLUMNS
        )
        await conn.copy_records_to_table(
            "auth0_profiles", records=cached_profiles(users), columns=PROFILE_COLUMNS
        )
        await conn.execute("VACUUM (ANALYZE) patients")
        await conn.execute("VACUUM (ANALYZE) registrations")
        await conn.execute("VACUUM (ANALYZE) auth0_profiles")
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


PROFILE_COLUMNS = ("user_id", "profile", "fetched_at")


def cached_profiles(users: Sequence[User], seed: int = 9) -> list[tuple[str, str, dt.datetime]]:
    """Every user's profile as a service that has run for a while holds it: fetched between
    a minute and an hour ago, so the profile page serves most of them stale and refreshes
    them within the Management API budget, as it would in production (the stand-in tenant
    answers the same fields)."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    rows = []
    for user in users:
        local = user.sub.split("|")[-1]
        profile = {
            "user_id": user.sub,
            "email": f"{local}@example.com",
            "email_verified": True,
            "given_name": None,
            "family_name": None,
            "name": local,
            "nickname": local,
            "picture": "https://example.com/avatar.png",
            "user_metadata": {},
            "updated_at": "2026-11-01T09:30:00.000Z",
        }
        fetched = now - dt.timedelta(seconds=rng.uniform(60, 3600))
        rows.append((user.sub, orjson.dumps(profile).decode(), fetched))
    return rows


# --- Tokens -----------------------------------------------------------------------------

_signer: rsa.RSAPrivateKey | None = None


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def init_signer(private_pem: bytes) -> None:
    global _signer
    key = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    _signer = key


def _sign_batch(header: dict[str, Any], batch: list[dict[str, Any]]) -> list[str]:
    """JWS compact serialisation, RS256; the key was loaded once per worker process."""
    assert _signer is not None
    head = _b64(orjson.dumps(header))
    tokens = []
    for claims in batch:
        signing_input = head + b"." + _b64(orjson.dumps(claims))
        signature = _signer.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        tokens.append((signing_input + b"." + _b64(signature)).decode())
    return tokens


def token_claims(
    minter: TokenMinter, users: Sequence[User], count: int, ttl: int
) -> list[dict[str, Any]]:
    """`count` claim sets cycling over `users`, each with a fresh sid, jti and iat."""
    claims = []
    for n in range(count):
        user = users[n % len(users)]
        one = minter.claims(
            user.sub,
            permissions=PERMISSIONS,
            org_id=user.org_id,
            azp=SPA_CLIENT_ID,
            **{EMAIL_VERIFIED_CLAIM: True},
        )
        one["exp"] = one["iat"] + ttl
        one["jti"] = uuid.uuid4().hex  # never repeats across batches
        claims.append(one)
    return claims


def mint(key: SigningKey, claims: list[dict[str, Any]], pool: Executor | None = None) -> list[str]:
    """Sign every claim set with `key`; in `pool` (processes) when given, in order."""
    header = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
    if pool is None:
        init_signer(key.private_pem)
        return _sign_batch(header, claims)
    size = 500
    batches = [claims[i : i + size] for i in range(0, len(claims), size)]
    futures = [pool.submit(_sign_batch, header, batch) for batch in batches]
    return [token for future in futures for token in future.result()]


def write_tokens(path: str, tokens: Sequence[str], claims: Sequence[dict[str, Any]]) -> None:
    """One `token<TAB>scope` line per token, for the wrk script (and the floor's scope)."""
    with open(path, "w", encoding="ascii") as out:
        for token, claim in zip(tokens, claims, strict=True):
            org = claim.get("org_id")
            scope = f"org:{org}" if org else f"user:{claim['sub']}"
            out.write(f"{token}\t{scope}\n")
