"""Ours next to `base` (`--base DIR`: the service of another checkout, e.g. the commit
before a change) in the report: the same scenarios, users and database, measured in the
same rounds, so what a change bought is read off one run rather than two runs on a machine
whose speed drifts between them."""

from __future__ import annotations

from bench.harness.model import Run, find_cell, throughput_ratio

COMPARED = ("read", "read_dpop", "profile", "post")


def _ratio(value: tuple[float, float, float] | None) -> str:
    if value is None:
        return "n/a"
    ratio, low, high = value
    return f"{ratio:.2f}" + (f" [{low:.2f}..{high:.2f}]" if high - low > 0.005 else "")


def base_table(run: Run) -> list[str]:
    lines = [
        "| scenario | workers | conns | req/s base / ours | ours/base | service µs/req "
        "base / ours | Postgres µs/req base / ours | p50 ms base / ours | p99 ms base / ours |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for scenario in COMPARED:
        for workers in run.args.workers:
            for conns in run.args.connections:
                base = find_cell(run, "base", scenario, workers, conns)
                ours = find_cell(run, "ours", scenario, workers, conns)
                if base is None or ours is None or not base.samples or not ours.samples:
                    continue
                lines.append(
                    f"| {scenario} | {workers} | {conns} | {base.median('rps'):,.0f} / "
                    f"{ours.median('rps'):,.0f} | {_ratio(throughput_ratio(ours, base))} "
                    f"| {base.median('app_us'):,.0f} / {ours.median('app_us'):,.0f} "
                    f"| {base.median('db_us'):,.0f} / {ours.median('db_us'):,.0f} "
                    f"| {base.median('p50_ms'):.1f} / {ours.median('p50_ms'):.1f} "
                    f"| {base.median('p99_ms'):.1f} / {ours.median('p99_ms'):.1f} |"
                )
    return lines if len(lines) > 2 else []


def base_lines(run: Run) -> list[str]:
    """The report's comparison with `base`; nothing when no base was measured."""
    table = base_table(run)
    if not table:
        return []
    return [
        f"Ours against base (`--base {run.args.base}`, commit {run.base_git or '?'}"
        + "".join(f", `--base-env {item}`" for item in run.args.base_env)
        + "), cells interleaved in the same rounds:",
        "",
        *table,
        "",
    ]
