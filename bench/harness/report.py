"""The run's results as Markdown: the table, the ratios against the targets, tenant counts."""

from __future__ import annotations

import math
import platform
import subprocess
from collections.abc import Iterable

from app.core.settings import Quota
from bench.harness.basecompare import base_lines
from bench.harness.dpopread import dpop_lines
from bench.harness.model import (
    Measurement,
    OpenLoopCell,
    Run,
    TenantCounts,
    find_cell,
    throughput_ratio,
    verdict,
)

JWKS_PERIOD_S = 600  # at most one JWKS request per 10 minutes per process
M2M_LIFETIME_S = 86_400  # the stand-in tenant's M2M token lifetime, as Auth0's default


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
        if m.scenario == "read_dpop" and m.total("wraps"):
            text += f", proofs reused {m.total('wraps')}x"
        lines.append(
            head + f"| {m.median('rps'):,.0f} | {m.median('p50_ms'):.1f} "
            f"| {m.median('p95_ms'):.1f} | {m.median('p99_ms'):.1f} | {text} "
            f"| {m.median('app_us'):,.0f} | {m.median('db_us'):,.0f} |"
        )
    return lines


# The targets (one run, two cores, the log grown first): docs/benchmarks.md.
READ_PEER, READ_FLOOR, POST_INSERT, PROFILE_READ = 2.0, 0.5, 0.7, 0.8
SERVICE_CPU, POSTGRES_CPU, OPEN_P99 = 2.0, 2.5, 2.0  # at most these times the floor's


def ratios(run: Run) -> list[str]:
    lines = [
        f"| workers | conns | read ours/peer (≥ {READ_PEER}) | read ours/floor (≥ {READ_FLOOR}) "
        f"| POST ours/insert (≥ {POST_INSERT}) | profile/read (≥ {PROFILE_READ}) "
        "| cold/warm read | ours read p99 ms (closed loop, no target) | ours errors (0) |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for workers in run.args.workers:
        for conns in run.args.connections:

            def get(target: str, scenario: str) -> Measurement | None:
                return find_cell(run, target, scenario, workers, conns)  # noqa: B023

            read = get("ours", "read")
            p99_text = f"{read.median('p99_ms'):.1f}" if read else "n/a"
            errors = sum(
                m.total("errors")
                for m in run.measurements
                if m.target == "ours" and m.workers == workers and m.connections == conns
            )
            cold = throughput_ratio(get("ours", "read_cold"), read)
            post = throughput_ratio(get("ours", "post"), get("floor", "insert"))
            lines.append(
                f"| {workers} | {conns} "
                f"| {verdict(throughput_ratio(read, get('peer', 'read')), READ_PEER)} "
                f"| {verdict(throughput_ratio(read, get('floor', 'read')), READ_FLOOR)} "
                f"| {verdict(post, POST_INSERT)} "
                f"| {verdict(throughput_ratio(get('ours', 'profile'), read), PROFILE_READ)} "
                f"| {f'{cold[0]:.2f}' if cold else 'n/a'} | {p99_text} "
                f"| {errors}{' MISSED' if errors else ' met'} |"
            )
    return lines


COOKIE_COST = 1.2  # a cookie read costs at most this times the bearer read


def cookie_table(run: Run) -> list[str]:
    """The cookie-authenticated read next to the bearer read: the same path, users and
    patients, the session looked up instead of a token sent."""
    lines = [
        "| workers | conns | req/s bearer / cookie | cost cookie/bearer (throughput, "
        f"≤ {COOKIE_COST}) | service µs/read bearer / cookie | cookie/bearer CPU "
        f"(≤ {COOKIE_COST}) | p50 ms bearer / cookie | p99 ms bearer / cookie |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for workers in run.args.workers:
        for conns in run.args.connections:
            bearer = find_cell(run, "ours", "read", workers, conns)
            cookie = find_cell(run, "ours", "read_cookie", workers, conns)
            if bearer is None or cookie is None:
                continue
            cost = throughput_ratio(bearer, cookie)
            cost_text = "n/a"
            if cost is not None:
                spread = f" [{cost[1]:.2f}..{cost[2]:.2f}]" if cost[2] - cost[1] > 0.005 else ""
                verdict = "met" if cost[0] <= COOKIE_COST else "MISSED"
                cost_text = f"{cost[0]:.2f}{spread} {verdict}"
            lines.append(
                f"| {workers} | {conns} | {bearer.median('rps'):,.0f} / "
                f"{cookie.median('rps'):,.0f} | {cost_text} "
                f"| {bearer.median('app_us'):,.0f} / {cookie.median('app_us'):,.0f} "
                f"| {_at_most(cookie.median('app_us'), bearer.median('app_us'), COOKIE_COST)} "
                f"| {bearer.median('p50_ms'):.1f} / {cookie.median('p50_ms'):.1f} "
                f"| {bearer.median('p99_ms'):.1f} / {cookie.median('p99_ms'):.1f} |"
            )
    return lines if len(lines) > 2 else []


PROXY_CPU_US = 1000  # the proxy's service CPU per forwarded call, at most (µs, median)


def proxy_table(run: Run) -> list[str]:
    """The proxied call (ours, `/remote/bench/whoami`: the caller's token verified, the call
    forwarded and recorded) next to the same call made to the upstream directly."""
    lines = [
        "| workers | conns | req/s proxied / direct | p50 ms proxied / direct "
        f"| p99 ms proxied / direct | service µs per proxied call (≤ {PROXY_CPU_US}) |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for workers in run.args.workers:
        for conns in run.args.connections:
            proxied = find_cell(run, "ours", "proxy", workers, conns)
            direct = find_cell(run, "upstream", "proxy", workers, conns)
            if proxied is None or direct is None:
                continue
            cpu = proxied.median("app_us")
            lines.append(
                f"| {workers} | {conns} | {proxied.median('rps'):,.0f} / "
                f"{direct.median('rps'):,.0f} "
                f"| {proxied.median('p50_ms'):.1f} / {direct.median('p50_ms'):.1f} "
                f"| {proxied.median('p99_ms'):.1f} / {direct.median('p99_ms'):.1f} "
                f"| {cpu:,.0f} {'met' if cpu <= PROXY_CPU_US else 'MISSED'} |"
            )
    return lines if len(lines) > 2 else []


def _at_most(value: float, floor: float, bound: float) -> str:
    if not floor:
        return "n/a"
    ratio = value / floor
    return f"{ratio:.2f} {'met' if ratio <= bound else 'MISSED'}"


def cpu_table(run: Run) -> list[str]:
    """CPU per read, split into the server's processes and the Postgres backends of the
    benchmark database, for ours, the peer and the floor (medians over the rounds)."""
    lines = [
        "| workers | conns | service µs/read: ours / peer / floor | ours/floor "
        f"(≤ {SERVICE_CPU}) | Postgres µs/read: ours / peer / floor | ours/floor "
        f"(≤ {POSTGRES_CPU}) |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for workers in run.args.workers:
        for conns in run.args.connections:
            cells = {
                t: find_cell(run, t, "read", workers, conns) for t in ("ours", "peer", "floor")
            }
            if not any(cells.values()):
                continue

            def cpu(target: str, name: str) -> str:
                cell = cells[target]  # noqa: B023
                return f"{cell.median(name):,.0f}" if cell else "n/a"

            ours, floor = cells["ours"], cells["floor"]
            app = _at_most(ours.median("app_us"), floor.median("app_us"), SERVICE_CPU) if (
                ours and floor) else "n/a"  # fmt: skip
            db = _at_most(ours.median("db_us"), floor.median("db_us"), POSTGRES_CPU) if (
                ours and floor) else "n/a"  # fmt: skip
            lines.append(
                f"| {workers} | {conns} "
                f"| {cpu('ours', 'app_us')} / {cpu('peer', 'app_us')} / {cpu('floor', 'app_us')} "
                f"| {app} | {cpu('ours', 'db_us')} / {cpu('peer', 'db_us')} / "
                f"{cpu('floor', 'db_us')} | {db} |"
            )
    return lines


def breakdown_table(cells: Iterable[OpenLoopCell]) -> list[str]:
    """Where ours' fixed-rate read spent its time, from its access log: per phase, the median
    request's and the 99th percentile's, and what the slowest 1% spent on average; then
    how often the event loop ran late."""
    lines = [
        "| workers | round | requests | phase | p50 ms | p99 ms | slowest 1%: mean ms |",
        "|--:|--:|--:|---|--:|--:|--:|",
    ]
    lag_lines = []
    for cell in cells:
        if cell.target != "ours":
            continue
        for n, sample in enumerate(cell.samples, 1):
            found = sample.breakdown
            if found is None:
                continue
            p50, p99, tail = found.total[0], found.total[1], found.tail.get("total", 0.0)
            lines.append(
                f"| {cell.workers} | {n} | {found.requests:,} | **server total** "
                f"| {p50:.2f} | {p99:.2f} | {tail:.2f} |"
            )
            for name, (p50, p99) in found.phases.items():
                lines.append(
                    f"| | | | {name} | {p50:.2f} | {p99:.2f} | {found.tail.get(name, 0):.2f} |"
                )
            lag = sample.loop_lag or {}
            if lag.get("samples"):
                lag_lines.append(
                    f"- {cell.workers} worker(s), round {n}: {lag['samples']:.0f} loop-lag samples "
                    f"(every 0.1 s per worker), {lag['over_5ms']:.0f} over 5 ms, "
                    f"{lag['over_10ms']:.0f} over 10 ms, {lag['over_50ms']:.0f} over 50 ms"
                )
    if len(lines) == 2:
        return []
    return [*lines, "", *lag_lines]


def open_loop_table(cells: Iterable[OpenLoopCell]) -> list[str]:
    """The read at a fixed rate: ours and the floor side by side, and the p99 target."""
    cells = list(cells)
    lines = [
        "| workers | target | asked req/s | conns | achieved req/s | p50 ms | p99 ms "
        "| p99 from due ms | late (> 10 ms) | errors | app CPU µs/req | DB CPU µs/req "
        "| load generator CPU µs/req |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    verdicts = []
    for cell in cells:
        if not cell.samples:
            continue
        lines.append(
            f"| {cell.workers} | {cell.target} | {cell.rate:,.0f} | {cell.connections} "
            f"| {cell.median('rate'):,.0f} | {cell.median('p50_ms'):.1f} "
            f"| {cell.median('p99_ms'):.1f} | {cell.median('p99_due_ms'):.1f} "
            f"| {cell.total('late')} | {cell.total('errors')} | {cell.median('app_us'):,.0f} "
            f"| {cell.median('db_us'):,.0f} | {cell.median('generator_us'):,.0f} |"
        )
    for workers in sorted({c.workers for c in cells}):
        by = {c.target: c for c in cells if c.workers == workers and c.samples}
        if "ours" in by and "floor" in by:
            ours, floor = by["ours"].median("p99_ms"), by["floor"].median("p99_ms")
            short = [
                t for t, c in by.items() if not all(s.result.kept_up for s in c.samples)
            ]  # fmt: skip
            caveat = (
                f"; the asked rate was not delivered to {' and '.join(short)} in every round "
                "(the server or the machine saturated): a saturated figure, not an open-loop one"
                if short
                else ""
            )
            verdicts.append(
                f"- {workers} worker(s), {by['ours'].rate:,.0f} req/s: ours p99 {ours:.1f} ms, "
                f"the floor's {floor:.1f} ms: ours/floor {_at_most(ours, floor, OPEN_P99)} "
                f"(target ≤ {OPEN_P99}x){caveat}"
            )
    return [*lines, "", *verdicts] if verdicts else lines


def audit_log_lines(run: Run) -> list[str]:
    lines = []
    if run.audit_grown is not None:
        lines.append(f"- audit log grown first: {run.audit_grown.text()}")
    elif run.args.audit_events == 0:
        lines.append("- audit log not grown (`--audit-events 0`): a fresh table's indexes")
    if run.audit_before is not None:
        lines.append(f"- audit log when the measurements started: {run.audit_before.text()}")
    if run.audit_after is not None:
        lines.append(f"- audit log when they ended: {run.audit_after.text()}")
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


# The stand-in tenant's counts of the cookie sessions' sign-ins (bench/harness/sessions.py).
_BROWSER_LOGIN = {"authorize", "code_grant", "refresh_grant", "refresh_reuse", "revoke"}
_BROWSER_LOGIN |= {"sign_in", "logout", "backchannel"}


def tenant_table(counts: Iterable[TenantCounts], budget: str = "") -> list[str]:
    """What each server asked of its tenant, and whether that stayed within the bounds: the
    JWKS and M2M token per process and period, and ours' Management API budget (`budget`,
    COUNT/SECONDS: the most calls that reached the tenant within any such window)."""
    lines = [
        "| server | workers | alive s | JWKS | discovery | M2M token | Management API "
        "| Management API per s | busiest window | per process: JWKS, M2M | bound |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    quota = Quota.parse(budget) if budget else None
    for t in counts:
        c = t.counts
        # `oauth_token` counts every grant; the browser sign-ins' own are not M2M tokens.
        jwks = c.get("jwks", 0)
        m2m = c.get("oauth_token", 0) - c.get("code_grant", 0) - c.get("refresh_grant", 0)
        skip = {"jwks", "oauth_token", "discovery", "total", "management_busiest"}
        management = sum(v for k, v in c.items() if k not in skip | set(_BROWSER_LOGIN))
        busiest = c.get("management_busiest")
        jwks_bound = t.workers * math.ceil(max(t.seconds, 1) / JWKS_PERIOD_S)
        m2m_bound = t.workers * math.ceil(max(t.seconds, 1) / M2M_LIFETIME_S)
        ok = jwks <= jwks_bound and m2m <= m2m_bound
        within_budget = quota is None or busiest is None or busiest <= quota.count
        if t.target == "ours":
            ok = ok and within_budget
        limits = f"JWKS ≤ {jwks_bound}, M2M ≤ {m2m_bound}"
        if quota is not None and t.target == "ours":
            limits += f", ≤ {quota.count} per {quota.seconds:g} s"
        verdict = f"{'within' if ok else 'EXCEEDED'} ({limits})"
        if t.target != "ours":
            verdict = "(the target is ours)" if ok else f"would exceed: {verdict}"
        window = f"{busiest} / {quota.seconds:g} s" if busiest is not None and quota else "-"
        lines.append(
            f"| {t.target} | {t.workers} | {t.seconds:.0f} | {jwks} | {c.get('discovery', 0)} "
            f"| {m2m} | {management} | {management / max(t.seconds, 1):.2f} | {window} "
            f"| {jwks / t.workers:.1f}, {m2m / t.workers:.1f} | {verdict} |"
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
        *(
            [
                "- **diagnostic run**: every session of the app role (all targets) with "
                + ", ".join(f"`{item}`" for item in a.db_role_setting)
            ]
            if a.db_role_setting
            else []
        ),
        *audit_log_lines(run),
        "",
        *table(run.measurements),
        "",
        "Ratios (throughput, same workers and connections, this run):",
        "",
        *ratios(run),
        "",
        "CPU per read (service: the server's processes; Postgres: the backends of the "
        "benchmark database; medians over the rounds):",
        "",
        *cpu_table(run),
        "",
        *(
            [
                "Cookie sessions: `GET /api/patients` with the session cookie "
                f"and `X-CSRF: 1` ({a.sessions} sessions signed in through the stand-in "
                "tenant's form, bench/harness/sessions.py) next to the bearer read; cost is the "
                "bearer's throughput over the cookie's:",
                "",
                *cookie_table(run),
                "",
            ]
            if cookie_table(run)
            else []
        ),
        *dpop_lines(run),
        *base_lines(run),
        *(
            [
                "Remote APIs: a call forwarded through `/remote/bench/whoami` (a `user` route "
                "of the service's audience, the caller's bearer token verified and forwarded, "
                "one audit event) next to the same call to the stand-in upstream directly:",
                "",
                *proxy_table(run),
                "",
            ]
            if proxy_table(run)
            else []
        ),
        *(
            [
                "Read at a fixed rate (open loop, bench/kit/openloop.py: "
                f"{a.open_loop:g} x our read's saturation throughput, the same rate for "
                "the floor; latency from the send, and from when the request was due):",
                "",
                *open_loop_table(run.open_loop),
                "",
            ]
            if run.open_loop
            else []
        ),
        *(
            [
                "Where ours' fixed-rate read spent its time (bench/kit/breakdown.py, from its "
                "access log; `other`: what no phase covers):",
                "",
                *breakdown_table(run.open_loop),
                "",
            ]
            if breakdown_table(run.open_loop)
            else []
        ),
        "Postgres backends of the benchmark database, sampled every 50 ms during the runs "
        "(`idle in transaction`: waiting for the application inside a transaction):",
        "",
        *waits_table(run),
        "",
        "Stand-in tenant requests during each server's life (one tenant per server):",
        "",
        *tenant_table(run.tenant_counts, run.args.management_rate),
    ]
    if run.profile:
        lines += ["", *run.profile]
    return "\n".join(lines)
