"""The DPoP read next to the bearer read in the report: the same path and users, a bound
token and a fresh proof per request, the proof checked and its `jti` remembered (a write
per request, in Postgres or in Redis), against the bound: at least 0.85 of the bearer
read's throughput in the same run."""

from __future__ import annotations

from bench.harness.model import Run, find_cell, throughput_ratio, verdict

DPOP_READ = 0.85


def replay_store(run: Run) -> str:
    """Where ours remembered the proofs: Redis when the run gave it REDIS_URL."""
    if any(item.startswith("REDIS_URL=") for item in run.args.service_env):
        return "Redis (REDIS_URL: one SET NX a proof, concurrent ones in one pipeline)"
    return "Postgres (`dpop_proofs`: concurrent proofs share one INSERT and its commit)"


def dpop_table(run: Run) -> list[str]:
    lines = [
        f"| workers | conns | req/s bearer / DPoP | DPoP/bearer (≥ {DPOP_READ}) "
        "| service µs/read bearer / DPoP | Postgres µs/read bearer / DPoP "
        "| p50 ms bearer / DPoP | p99 ms bearer / DPoP |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for workers in run.args.workers:
        for conns in run.args.connections:
            bearer = find_cell(run, "ours", "read", workers, conns)
            dpop = find_cell(run, "ours", "read_dpop", workers, conns)
            if bearer is None or dpop is None:
                continue
            lines.append(
                f"| {workers} | {conns} | {bearer.median('rps'):,.0f} / "
                f"{dpop.median('rps'):,.0f} | {verdict(throughput_ratio(dpop, bearer), DPOP_READ)} "
                f"| {bearer.median('app_us'):,.0f} / {dpop.median('app_us'):,.0f} "
                f"| {bearer.median('db_us'):,.0f} / {dpop.median('db_us'):,.0f} "
                f"| {bearer.median('p50_ms'):.1f} / {dpop.median('p50_ms'):.1f} "
                f"| {bearer.median('p99_ms'):.1f} / {dpop.median('p99_ms'):.1f} |"
            )
    return lines if len(lines) > 2 else []


def dpop_lines(run: Run) -> list[str]:
    """The report's DPoP section; nothing when the DPoP read was not measured."""
    table = dpop_table(run)
    if not table:
        return []
    return [
        "DPoP: `GET /api/patients` with `Authorization: DPoP` and a fresh ES256 proof per "
        f"request (a key per user), the proofs remembered in {replay_store(run)}, next to "
        "the bearer read:",
        "",
        *table,
        "",
    ]
