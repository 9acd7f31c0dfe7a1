"""The benchmark's DPoP read: its proofs (each new, bound to the user's token, for the read's
URL) and its table against the 0.85 bound."""

from __future__ import annotations

import argparse
from pathlib import Path

from jose import jwt

from app.auth.dpop import access_token_hash
from bench.harness import proofs
from bench.harness.dpopread import dpop_lines, dpop_table
from bench.harness.model import Measurement, Run, Sample
from bench.kit.wrk import WrkResult
from devkit.dpop import DPoPKey


def _cell(scenario: str, requests: int, app_s: float, db_s: float = 0.5) -> Measurement:
    result = WrkResult(requests, 5.0, 10.0, 20.0, 30.0, 40.0, 0, 0, 0, 1.0)
    return Measurement("ours", scenario, 1, 64, [Sample(result, app_s, db_s, {})])


def _run(*cells: Measurement, service_env: list[str] | None = None) -> Run:
    args = argparse.Namespace(workers=[1], connections=[64], service_env=service_env or [])
    run = Run(args, Path("/nonexistent"))
    run.measurements.extend(cells)
    return run


def test_a_dpop_read_within_the_bound_is_met() -> None:
    # Bearer 200 req/s; DPoP 180 req/s, 1,100 µs of service CPU a read.
    lines = dpop_table(_run(_cell("read", 1000, 1.0), _cell("read_dpop", 900, 0.99)))
    assert lines[-1].startswith("| 1 | 64 | 200 / 180 | 0.90 met | 1,000 / 1,100 |")


def test_a_dpop_read_below_the_bound_is_missed() -> None:
    lines = dpop_table(_run(_cell("read", 1000, 1.0), _cell("read_dpop", 800, 0.99)))
    assert "| 0.80 MISSED |" in lines[-1]


def test_the_report_says_where_the_proofs_were_remembered() -> None:
    cells = (_cell("read", 1000, 1.0), _cell("read_dpop", 900, 0.99))
    assert "Postgres" in dpop_lines(_run(*cells))[0]
    redis = _run(*cells, service_env=["REDIS_URL=redis://127.0.0.1:6379/0"])
    assert "Redis" in dpop_lines(redis)[0]
    assert dpop_lines(_run(cells[0])) == []


def test_proofs_are_new_and_bound_to_each_users_token(tmp_path: Path) -> None:
    keys = [DPoPKey.generate() for _ in range(3)]
    tokens = [f"header.payload-{n}.signature" for n in range(3)]
    clients = proofs.Clients(keys, tokens)
    path = proofs.write_proofs(tmp_path / "p.tsv", clients, "http://127.0.0.1:9000", 7)

    lines = [line.split("\t") for line in path.read_text().splitlines()]
    assert len(lines) == 7
    jtis = set()
    for n, (token, proof) in enumerate(lines):
        assert token == tokens[n % 3]
        header = jwt.get_unverified_header(proof)
        claims = jwt.get_unverified_claims(proof)
        assert header["jwk"] == keys[n % 3].public_jwk
        assert claims["htu"] == "http://127.0.0.1:9000/api/patients"
        assert claims["ath"] == access_token_hash(token)
        jtis.add(claims["jti"])
    assert len(jtis) == 7


def test_enough_proofs_for_the_bearer_reads_rate() -> None:
    assert proofs.wanted([_cell("read", 10_000, 1.0)], 5) == int(2000 * 5 * 1.5) + 1000
    assert proofs.wanted([], 5) == int(proofs.DEFAULT_RATE * 5 * 1.5) + 1000
