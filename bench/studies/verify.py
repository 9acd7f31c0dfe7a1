"""Per-token cost of access-token verification, in microseconds.

    python -m bench.studies.verify [--runs 7] [--number 2000]

Measures, in one process and one run so the figures compare: the raw `cryptography` RSA
PKCS#1 v1.5 SHA-256 verify (the floor), python-jose's `jwt.decode` with a key object built
once, our `TokenVerifier` cold (verified-token cache off, and fresh tokens with the cache on)
and warm (the same token again, from the cache). Each figure is the median of `--runs` runs
of `--number` verifications. The JWKS is served by an in-process `httpx.MockTransport`, so
no network is involved and the keys are loaded before timing starts.

Targets: cold <= 1.2x python-jose's decode, warm <= 10 us.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jose import jwk, jwt

from app.auth.tokens import TokenVerifier
from app.core.settings import Settings
from devkit.keys import SigningKey, TokenMinter

DOMAIN = "tenant.example.com"
AUDIENCE = "https://api.example.com"
PERMISSIONS = ["read:patients", "create:patients", "update:patients", "read:audit_events"]


def _settings(cache_size: int) -> Settings:
    return Settings(
        database_url="postgresql://bench@127.0.0.1/bench",
        auth0_domain=DOMAIN,
        auth0_audience=AUDIENCE,
        auth0_client_id="bench",
        auth0_client_secret="bench-secret",
        app_secret_key="0123456789abcdef0123456789abcdef-test",
        auth0_base_url="http://tenant.bench",
        token_cache_size=cache_size,
        _env_file=None,
    )


def _per_token_us(run: Callable[[], None], number: int, runs: int) -> float:
    samples = []
    for _ in range(runs):
        gc.disable()
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) / number * 1e6)
        gc.enable()
    return statistics.median(samples)


async def _per_token_us_async(
    verify: Callable[[str], Awaitable[object]], tokens: list[str], runs: int
) -> float:
    samples = []
    for _ in range(runs):
        gc.disable()
        start = time.perf_counter()
        for token in tokens:
            await verify(token)
        samples.append((time.perf_counter() - start) / len(tokens) * 1e6)
        gc.enable()
    return statistics.median(samples)


def _fresh_tokens(minter: TokenMinter, count: int) -> list[str]:
    """Distinct tokens, signed with a key object built once (minting is not what we time)."""
    private = jwk.construct(minter.current.private_pem.decode(), "RS256")
    headers = {"kid": minter.current.kid}
    return [
        jwt.encode(
            minter.claims(f"auth0|bench-{n}", permissions=PERMISSIONS),
            private,
            algorithm="RS256",
            headers=headers,
        )
        for n in range(count)
    ]


async def measure(number: int, runs: int) -> dict[str, float]:
    minter = TokenMinter(DOMAIN, AUDIENCE, keys=[SigningKey.generate(kid="bench-key")])
    token = minter.mint(permissions=PERMISSIONS)
    signing_input, _, signature_b64 = token.rpartition(".")
    signature = base64.urlsafe_b64decode(signature_b64 + "=" * (-len(signature_b64) % 4))
    message = signing_input.encode()
    prebuilt = jwk.construct(minter.current.public_jwk, "RS256")
    public = serialization.load_pem_public_key(prebuilt.to_pem())
    assert isinstance(public, rsa.RSAPublicKey)

    def floor() -> None:
        for _ in range(number):
            public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())

    def jose_decode() -> None:
        for _ in range(number):
            jwt.decode(
                token, prebuilt, algorithms=["RS256"], audience=AUDIENCE, issuer=minter.issuer
            )

    results = {
        "floor": _per_token_us(floor, number, runs),
        "jose": _per_token_us(jose_decode, number, runs),
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=minter.jwks()))
    async with httpx.AsyncClient(transport=transport) as http:
        cold = TokenVerifier(_settings(cache_size=0), http)
        warm = TokenVerifier(_settings(cache_size=10_000), http)
        assert await cold.ready() and await warm.ready()
        await warm.verify_access_token(token)
        same = [token] * number
        results["cold"] = await _per_token_us_async(cold.verify_access_token, same, runs)
        fresh = _fresh_tokens(minter, number)
        samples = []
        for _ in range(runs):  # a new verifier each run, so every token is a miss
            inserting = TokenVerifier(_settings(cache_size=10_000), http)
            await inserting.ready()
            samples.append(await _per_token_us_async(inserting.verify_access_token, fresh, 1))
        results["cold_new"] = statistics.median(samples)
        results["warm"] = await _per_token_us_async(warm.verify_access_token, same, runs)
        assert cold.jwks_fetch_count == warm.jwks_fetch_count == 1
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    r = asyncio.run(measure(args.number, args.runs))
    print(f"per-token cost, median of {args.runs} runs x {args.number} tokens (us)")
    rows = [
        ("cryptography RSA PKCS1v15-SHA256 verify (floor)", r["floor"], ""),
        ("python-jose jwt.decode, prebuilt key", r["jose"], ""),
        (
            "TokenVerifier cold (cache off)",
            r["cold"],
            f"{r['cold'] / r['jose']:.2f}x jose, {r['cold'] / r['floor']:.2f}x floor",
        ),
        (
            "TokenVerifier cold (new tokens, cache on)",
            r["cold_new"],
            f"{r['cold_new'] / r['jose']:.2f}x jose",
        ),
        ("TokenVerifier warm (cached)", r["warm"], f"{r['warm'] / r['jose']:.3f}x jose"),
    ]
    for name, value, note in rows:
        print(f"  {name:<50} {value:8.2f}   {note}")
    cold_ok = r["cold"] <= 1.2 * r["jose"] and r["cold_new"] <= 1.2 * r["jose"]
    print(
        f"targets: cold <= 1.2x jose: {'met' if cold_ok else 'MISSED'}; "
        f"warm <= 10 us: {'met' if r['warm'] <= 10 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
