"""The run's results as Markdown: the table, the ratios against the targets, tenant counts."""

from __future__ import annotations

import math
import platform
import subprocess
from collections.abc import Iterable

from bench.harness import Measurement, Run, TenantCounts

JWKS_PERIOD_S = 600  # at most one JWKS request per 10 minutes per process
M2M_LIFETIME_S = 86_400  # the stand-in tenant's M2M token lifetime, as Auth0's default


def _find(run: Run, target: str, scenario: str, workers: int, conns: int) -> Measurement | None:
    for m in run.measurements:
        key = (m.target, m.scenario, m.workers, m.connections)
        if key == (target, scenario, workers, conns) and m.samples:
            return m
    return None


def table(measurements: Iterable[Measurement]) -> list[str]:
    lines = [
        "| target | scenario | workers | conns | req/s | p50 ms | p95 ms | p99 ms | errors "
        "| app CPU µs/req | DB CPU µs/req |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in measurements:
        head = f"| {m.target} | {m.scenario} | {m.workers} | {m.connections} "
        if not m.samples:
            lines.append(head + f"| skipped: {m.skipped or 'not run'} | | | | | | |")
            continue
        errors, status = m.total("errors"), m.total("status_errors")
        text = f"{errors}" + (f" ({status} non-2xx)" if status else "")
        if m.scenario.endswith("_cold") and m.total("wraps"):
            text += f", tokens reused {m.total('wraps')}x"
        lines.append(
            head + f"| {m.median('rps'):,.0f} | {m.median('p50_ms'):.1f} "
            f"| {m.median('p95_ms'):.1f} | {m.median('p99_ms'):.1f} | {text} "
            f"| {m.median('app_us'):,.0f} | {m.median('db_us'):,.0f} |"
        )
    return lines


def _ratio(a: Measurement | None, b: Measurement | None) -> tuple[float, float, float] | None:
    """Ratio of the median throughputs, and the lowest and highest per-round ratio."""
    if a is None or b is None or not b.median("rps"):
        return None
    rounds = [
        x.result.rps / y.result.rps for x, y in zip(a.samples, b.samples, strict=False)
        if y.result.rps
    ]  # fmt: skip
    ratio = a.median("rps") / b.median("rps")
    return ratio, min(rounds, default=ratio), max(rounds, default=ratio)


def _verdict(value: tuple[float, float, float] | None, target: float) -> str:
    if value is None:
        return "n/a"
    ratio, low, high = value
    spread = f" [{low:.2f}..{high:.2f}]" if high - low > 0.005 else ""
    return f"{ratio:.2f}{spread} {'met' if ratio >= target else 'MISSED'}"


def ratios(run: Run) -> list[str]:
    lines = [
        "| workers | conns | read ours/peer (≥ 2.0) | read ours/floor (≥ 0.8) "
        "| POST ours/insert (≥ 0.7) | cold/warm read | ours read p99 ms (≤ 25 at 64) "
        "| ours errors (0) |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for workers in run.args.workers:
        for conns in run.args.connections:

            def get(target: str, scenario: str) -> Measurement | None:
                return _find(run, target, scenario, workers, conns)  # noqa: B023

            read = get("ours", "read")
            p99 = read.median("p99_ms") if read else None
            p99_text = f"{p99:.1f}" if p99 is not None else "n/a"
            if p99 is not None and conns >= 64:
                p99_text += " met" if p99 <= 25 else " MISSED"
            errors = sum(
                m.total("errors")
                for m in run.measurements
                if m.target == "ours" and m.workers == workers and m.connections == conns
            )
            cold = _ratio(get("ours", "read_cold"), read)
            lines.append(
                f"| {workers} | {conns} | {_verdict(_ratio(read, get('peer', 'read')), 2.0)} "
                f"| {_verdict(_ratio(read, get('floor', 'read')), 0.8)} "
                f"| {_verdict(_ratio(get('ours', 'post'), get('floor', 'insert')), 0.7)} "
                f"| {f'{cold[0]:.2f}' if cold else 'n/a'} | {p99_text} "
                f"| {errors}{' MISSED' if errors else ' met'} |"
            )
    return lines


def waits_table(run: Run) -> list[str]:
    """Postgres backends by state during the busiest cells (medians would hide the mix)."""
    conns = max(run.args.connections)
    lines = [
        f"| {conns} connections, 1 worker | backends on CPU | top waits (backends, average) |",
        "|---|--:|---|",
    ]
    for m in run.measurements:
        if m.workers != min(run.args.workers) or m.connections != conns or not m.samples:
            continue
        merged: dict[str, float] = {}
        for sample in m.samples:
            for state, value in sample.waits.items():
                merged[state] = merged.get(state, 0.0) + value / len(m.samples)
        cpu = merged.pop("CPU", 0.0)
        top = sorted(merged.items(), key=lambda item: -item[1])[:4]
        waits = ", ".join(f"{name} {value:.1f}" for name, value in top) or "none"
        lines.append(f"| {m.target} {m.scenario} | {cpu:.1f} | {waits} |")
    return lines


def tenant_table(counts: Iterable[TenantCounts]) -> list[str]:
    lines = [
        "| server | workers | alive s | JWKS | discovery | M2M token | Management API "
        "| per process: JWKS, M2M | bound |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for t in counts:
        c = t.counts
        jwks, m2m = c.get("jwks", 0), c.get("oauth_token", 0)
        skip = {"jwks", "oauth_token", "discovery", "total"}
        management = sum(v for k, v in c.items() if k not in skip)
        jwks_bound = t.workers * math.ceil(max(t.seconds, 1) / JWKS_PERIOD_S)
        m2m_bound = t.workers * math.ceil(max(t.seconds, 1) / M2M_LIFETIME_S)
        ok = jwks <= jwks_bound and m2m <= m2m_bound
        verdict = f"{'within' if ok else 'EXCEEDED'} (JWKS ≤ {jwks_bound}, M2M ≤ {m2m_bound})"
        if t.target != "ours":
            verdict = "(the target is ours)" if ok else f"would exceed: {verdict}"
        lines.append(
            f"| {t.target} | {t.workers} | {t.seconds:.0f} | {jwks} | {c.get('discovery', 0)} "
            f"| {m2m} | {management} | {jwks / t.workers:.1f}, {m2m / t.workers:.1f} "
            f"| {verdict} |"
        )
    return lines


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0] if text else "?"


def machine(run: Run) -> list[str]:
    import asyncpg
    import starlette
    import uvicorn

    cpu = "?"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import os

    return [
        f"- date: {__import__('datetime').datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {os.cpu_count()} cores (`nproc`), {cpu}, {platform.platform()}",
        f"- Python {platform.python_version()}, uvicorn {uvicorn.__version__}, "
        f"starlette {starlette.__version__}, asyncpg {asyncpg.__version__}, "
        f"PostgreSQL {run.server_version}",
        f"- {_version(['wrk', '--version'])}",
    ]


def markdown(run: Run) -> str:
    a = run.args
    lines = [
        f"Run `{run.run_id}` of commit {run.git}: {a.patients:,} patients in {a.users:,} "
        f"scopes, {a.users:,} tokens; every cell measured {a.rounds}x for {a.duration:g}s "
        f"(wrk, 2 threads; {a.warmup:g}s warm-up in the first round), cells interleaved; "
        "figures are medians over the rounds, ratios are of the medians [lowest..highest "
        "per-round ratio].",
        "",
        *machine(run),
        "",
        *table(run.measurements),
        "",
        "Ratios (throughput, same workers and connections, this run):",
        "",
        *ratios(run),
        "",
        "Postgres backends of the benchmark database, sampled every 50 ms during the runs "
        "(`idle in transaction`: waiting for the application inside a transaction):",
        "",
        *waits_table(run),
        "",
        "Stand-in tenant requests during each server's life (one tenant per server):",
        "",
        *tenant_table(run.tenant_counts),
    ]
    if run.profile:
        lines += ["", *run.profile]
    return "\n".join(lines)
