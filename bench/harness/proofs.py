"""The DPoP read (`read_dpop`): a key per user, an access token bound to each (`cnf.jkt`),
and the proofs, signed just before each wrk run and each sent once (the service accepts a
proof once: a reused one would be a 401, counted as an error and as proofs reused).

A proof names the request's method and URL and the hash of its token, and is good for
DPOP_IAT_LEEWAY_SECONDS from its `iat`; ES256 signing costs about 75 µs in this process,
outside any measured run.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import data
from bench.harness.model import READ_PATH, Measurement, Run
from devkit.dpop import DPoPKey
from devkit.keys import SigningKey

DEFAULT_RATE = 4_000  # proofs a second to make when no bearer read measured the rate yet
MARGIN = 1.5  # proofs made per request a run is expected to send


@dataclass
class Clients:
    """One DPoP client per user: its key and its bound token."""

    keys: list[DPoPKey]
    tokens: list[str]


def make_clients(
    key: SigningKey, claims: Sequence[dict[str, Any]], pool: Executor | None = None
) -> Clients:
    """A fresh ES256 key for each claim set, and the token minted for it bound to that key."""
    keys = [DPoPKey.generate("ES256") for _ in claims]
    bound = [{**c, "cnf": {"jkt": k.thumbprint}} for c, k in zip(claims, keys, strict=True)]
    return Clients(keys, data.mint(key, bound, pool))


def headers(clients: Clients, base: str, n: int = 0) -> dict[str, str]:
    """One request's `Authorization: DPoP` and proof, for the preflight."""
    key, token = clients.keys[n], clients.tokens[n]
    proof = key.proof("GET", base + READ_PATH.split("?")[0], access_token=token)
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


def wanted(cells: Sequence[Measurement], seconds: float) -> int:
    """Proofs for a run of `seconds`: the bearer read's best measured rate (the DPoP read
    cannot be faster) times the margin, or a default rate before any was measured."""
    rates = [s.result.rps for m in cells for s in m.samples]
    return int(max(rates, default=DEFAULT_RATE) * seconds * MARGIN) + 1_000


def write_proofs(path: Path, clients: Clients, base: str, count: int) -> Path:
    """`count` lines of `token<TAB>proof` for bench/wrk/rotate.lua's `dpop_get`, the users
    taken in turn, every proof new."""
    url = base + READ_PATH.split("?")[0]
    users = len(clients.tokens)
    with path.open("w", encoding="ascii") as out:
        for n in range(count):
            key, token = clients.keys[n % users], clients.tokens[n % users]
            out.write(f"{token}\t{key.proof('GET', url, access_token=token)}\n")
    return path


def for_run(
    run: Run, base: str, seconds: float, name: str, *, workers: int, connections: int | None = None
) -> Path:
    """Fresh proofs for `seconds` of one wrk run of the DPoP read against `base`, as many as
    our bearer read with these workers (and connections, when given) suggests it can send,
    written in the run directory as `dpop-{name}.tsv`."""
    assert run.dpop is not None
    bearer = [
        m
        for m in run.measurements
        if (m.target, m.scenario, m.workers) == ("ours", "read", workers)
        and connections in (None, m.connections)
    ]
    path = run.run_dir / f"dpop-{name}.tsv"
    return write_proofs(path, run.dpop, base, wanted(bearer, seconds))
