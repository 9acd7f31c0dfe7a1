"""What a DPoP proof costs the service's CPU, in process: the verifier's checks alone.

    python -m bench.studies.dpopcost [--proofs 3000] [--alg ES256] [--users 50]
                                     [--stores] [--redis-url redis://127.0.0.1:6379/0]

Makes `--users` ES256 (or `--alg`) keys with a token bound to each, signs `--proofs` proofs
the way the benchmark's DPoP read does (bench/harness/proofs.py: a fresh jti each, the
read's URL, the token's `ath`), then times `DPoPVerifier.check` per proof with
`time.process_time()` (this process's CPU, so other load on the machine does not count),
with the replay store in memory, and its parts alone: decoding, the thumbprint, the
signature, the claims. With `--stores`, the replay stores' own CPU per proof too:
`PostgresReplays.first_use` on a throwaway database (dropped at the end) and, with
`--redis-url`, `RedisReplays.first_use`, one proof at a time and 32 at once. Prints the
median and the mean in µs. Figures only; it asserts
nothing. Run it under `py-spy record -o profile.svg -- python -m bench.studies.dpopcost`
to see where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from app.auth import dpop
from app.auth.dpop import DPoPVerifier, Presented
from app.auth.proofkeys import thumbprint
from app.auth.tokens import Principal, b64url_decode
from app.core.settings.dpop import DPoPSettings
from bench.harness.model import READ_PATH
from devkit.dpop import DPoPKey

ORIGIN = "http://127.0.0.1:8000"


class MemoryReplays:
    """The replay store as a set: the verifier's own cost, not the store's."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    async def first_use(self, key: bytes, until: float) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    async def aclose(self) -> None:
        return None


def _principal(key: DPoPKey, n: int) -> Principal:
    claims = {"sub": f"auth0|dpopcost-{n}", "cnf": {"jkt": key.thumbprint}}
    return Principal(sub=f"auth0|dpopcost-{n}", claims=claims, jkt=key.thumbprint)


def _proofs(alg: str, users: int, count: int) -> list[tuple[Presented, Principal]]:
    path = READ_PATH.split("?")[0]
    keys = [DPoPKey.generate(alg) for _ in range(users)]
    tokens = [f"token-{n}-" + "x" * 600 for n in range(users)]  # a token's usual length
    principals = [_principal(k, n) for n, k in enumerate(keys)]
    made = []
    for n in range(count):
        key, token = keys[n % users], tokens[n % users]
        proof = key.proof("GET", ORIGIN + path, access_token=token)
        made.append((Presented("dpop", token, [proof], "GET", path, ""), principals[n % users]))
    return made


def _time(label: str, items: list[Any], step: Callable[[Any], object]) -> float:
    spent = []
    for item in items:
        started = time.process_time()
        step(item)
        spent.append(time.process_time() - started)
    median, mean = statistics.median(spent) * 1e6, statistics.fmean(spent) * 1e6
    print(f"{label:<28} median {median:7.1f} µs   mean {mean:7.1f} µs")
    return mean


def _key(text: str) -> bytes:
    return hashlib.sha256(f"dpopcost/{time.time()}/{text}".encode()).digest()


async def _stores(count: int, redis_url: str | None) -> None:
    from app.auth.replay import PostgresReplays, RedisReplays
    from app.core.db import create_database
    from devkit.db import LOCAL_SERVER_URL, drop, provision

    db = await provision(LOCAL_SERVER_URL)
    database = create_database(db.app_url, min_size=2, max_size=4)
    await database.connect()
    try:
        stores: dict[str, Any] = {"postgres": PostgresReplays(database)}
        if redis_url:
            stores["redis"] = RedisReplays.from_url(redis_url)
        for name, store in stores.items():
            until = time.time() + 120
            await store.first_use(_key(f"warm/{name}"), until)
            spent = []
            for n in range(count):
                key = _key(f"{n}/{name}")
                started = time.process_time()
                await store.first_use(key, until)
                spent.append(time.process_time() - started)
            median = statistics.median(spent) * 1e6
            print(f"{name} first_use, one at a time  median {median:7.1f} µs")
            started = time.process_time()
            for n in range(count // 32):
                keys = [_key(f"c{n}.{i}/{name}") for i in range(32)]
                await asyncio.gather(*(store.first_use(k, until) for k in keys))
            per = (time.process_time() - started) / (count // 32 * 32) * 1e6
            print(f"{name} first_use, 32 at once     mean   {per:7.1f} µs")
            if name == "redis":
                await store.aclose()
    finally:
        await database.disconnect()
        await drop(db)


def _warm(made: list[tuple[Presented, Principal]], users: int, settings: DPoPSettings) -> Any:
    """A verifier that knows every key already, as in a run past its first requests."""
    verifier = DPoPVerifier(settings, MemoryReplays(), origin=ORIGIN, nonce_key=b"k" * 32)
    for presented, _ in made[:users]:
        verifier.verify_proof(presented)
    return verifier


def _round(
    made: list[tuple[Presented, Principal]],
    users: int,
    settings: DPoPSettings,
    loop: asyncio.AbstractEventLoop,
) -> None:
    whole = _warm(made, users, settings)
    made = made[users:]
    _time("check (whole)", made, lambda m: loop.run_until_complete(whole.check(*m)))
    alone = _warm(made, users, settings)
    _time("verify_proof", made, lambda m: alone.verify_proof(m[0]))
    proofs = [m[0].proofs[0] for m in made]
    known = {p.split(".")[0].encode() for p in proofs}
    _time("  decode (known header)", proofs, lambda p: dpop._decode(p, known))
    jwks = [orjson.loads(b64url_decode(p.split(".")[0].encode()))["jwk"] for p in proofs]
    _time("  thumbprint (when new)", jwks, thumbprint)
    _time("  access_token_hash", made, lambda m: dpop.access_token_hash(m[0].token))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--proofs", type=int, default=3000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--alg", default="ES256", choices=["ES256", "EdDSA", "RS256"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stores", action="store_true", help="time the replay stores too")
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    settings = DPoPSettings(mode="allowed")
    loop = asyncio.new_event_loop()
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}: {args.proofs} {args.alg} proofs, {args.users} keys")
        _round(_proofs(args.alg, args.users, args.proofs), args.users, settings, loop)
    if args.stores:
        loop.run_until_complete(_stores(min(args.proofs, 2000), args.redis_url))
    loop.close()


if __name__ == "__main__":
    main()
