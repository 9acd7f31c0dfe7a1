"""The run itself: every target up, every cell measured round after round, then the open
loop and the profile; the database dropped and the servers stopped whatever happens."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.auditlog.tables import log_size_at
from bench.harness import data, proofs, sessions
from bench.harness.launch import server_for, tenant_stats, upstream_server
from bench.harness.model import (
    ORDER,
    POST_BODY,
    READ_PATH,
    READ_ROUTE,
    SCENARIOS,
    TARGETS,
    Measurement,
    OpenLoopCell,
    OpenLoopSample,
    Run,
    Sample,
    Scenario,
    TenantCounts,
    cookie_mode,
    dpop_wanted,
    proxy_wanted,
)
from bench.harness.prepare import prepare
from bench.harness.profile import profile_read
from bench.kit.breakdown import log_offset, loop_lag, read_breakdown
from bench.kit.log import log
from bench.kit.loopback import http_call
from bench.kit.openloop import fixed_rate, get_calls, read_tokens
from bench.kit.servers import Server, cpu_delta, cpu_times, postgres_backends
from bench.kit.waits import WaitSampler
from bench.kit.wrk import run_wrk


def preflight(run: Run, server: Server, scenario: Scenario) -> str | None:
    """None when one request gets the expected status, else why the scenario is skipped."""
    headers = {"Authorization": f"Bearer {run.first_token}"}
    if scenario.mode == "cookie_get":
        headers = {"Cookie": f"__Host-bff_session={run.first_cookie}", "X-CSRF": "1"}
    if scenario.mode == "dpop_get":
        headers = proofs.headers(run.dpop, server.url)
    if scenario.target == "floor":
        headers["X-Bench-Scope"] = run.first_scope
    body = None
    if scenario.method == "POST":
        headers["Content-Type"] = "application/json"
        body = POST_BODY % f"preflight-{run.run_id}-{secrets.token_hex(4)}".encode()
    status, answer = http_call(
        server.url + scenario.path, method=scenario.method, headers=headers, body=body
    )
    if status == scenario.expect:
        return None
    try:
        problem = json.loads(answer)
        said = f"{problem.get('title')}: {problem.get('detail')}"
    except (ValueError, AttributeError):
        said = answer[:80].decode(errors="replace")
    return f"HTTP {status} (expected {scenario.expect}), {said}; see the server log"


def measure(run: Run, server: Server, cell: Measurement, scenario: Scenario, round_: int) -> None:
    args = run.args
    assert run.warm_tokens is not None and run.db is not None
    conns = cell.connections
    tag = f"{run.run_id}-r{round_}-{scenario.target}-w{cell.workers}-c{conns}-{scenario.name}"
    tokens = run.warm_tokens
    if scenario.mode == "cookie_get":
        assert run.session_cookies is not None
        tokens = run.session_cookies
    if scenario.cold:
        tokens = run.cold_tokens[round_ * len(args.connections) + args.connections.index(conns)]
    url = server.url + scenario.path
    if round_ == 0 and args.warmup >= 1:
        warm_mode = "get" if scenario.cold else scenario.mode
        warm_tokens = tokens if scenario.mode == "cookie_get" else run.warm_tokens
        if scenario.mode == "dpop_get":
            warm_tokens = dpop_proofs(run, server, cell, args.warmup, "warm")
        run_wrk(url, warm_tokens, warm_mode, tag + "-warm", connections=conns,
                seconds=args.warmup)  # fmt: skip
    if scenario.mode == "dpop_get":
        tokens = dpop_proofs(run, server, cell, args.duration, f"r{round_}")
    app_before = cpu_times(server.pids())
    db_before = cpu_times(postgres_backends(run.db.name))
    with WaitSampler(args.admin_url, run.db.name) as waits:
        result = run_wrk(url, tokens, scenario.mode, tag, connections=conns, seconds=args.duration)
    sample = Sample(
        result,
        cpu_delta(app_before, cpu_times(server.pids())),
        cpu_delta(db_before, cpu_times(postgres_backends(run.db.name))),
        waits.averages(),
    )
    cell.samples.append(sample)
    log(
        f"  r{round_ + 1} {scenario.target:5} {scenario.name:9} w{cell.workers} c{conns:<3} "
        f"{result.rps:7.0f} req/s  p50 {result.p50_ms:6.1f}  p99 {result.p99_ms:6.1f} ms  "
        f"errors {result.errors}  cpu {sample.app_cpu_s / max(result.requests, 1) * 1e6:5.0f} "
        "us/req"
    )


def dpop_proofs(run: Run, server: Server, cell: Measurement, seconds: float, name: str) -> Path:
    """Fresh proofs for one wrk run of the DPoP read, as many as the bearer read of these
    workers and connections suggests it can send."""
    workers, conns = cell.workers, cell.connections
    tag = f"w{workers}-c{conns}-{name}"
    return proofs.for_run(run, server.url, seconds, tag, workers=workers, connections=conns)


def open_loop_rate(run: Run, workers: int) -> float | None:
    """The share `--open-loop` of our read's measured saturation throughput (at the open
    loop's connection count if wrk ran it, else at the most connections measured)."""
    ours = [
        m
        for m in run.measurements
        if (m.target, m.scenario, m.workers) == ("ours", "read", workers) and m.samples
    ]
    if not ours:
        return None
    wanted = run.args.open_loop_connections
    cell = next((m for m in ours if m.connections == wanted), None)
    cell = cell or max(ours, key=lambda m: m.connections)
    return cell.median("rps") * run.args.open_loop or None


def measure_open_loop(run: Run, servers: dict[str, Server], workers: int) -> None:
    """Ours and the floor reading at the same fixed rate (half our saturation by default),
    over `--open-loop-connections`, for the cell duration, `--rounds` times, alternating."""
    args = run.args
    assert run.warm_tokens is not None and run.db is not None
    rate = open_loop_rate(run, workers)
    targets = [
        t
        for t in ("ours", "floor")
        if t in servers
        and any(
            (m.target, m.scenario, m.workers) == (t, "read", workers) and m.samples
            for m in run.measurements
        )
    ]
    if rate is None or not targets:
        log("  open loop skipped: no measured read of ours")
        return
    conns = args.open_loop_connections
    tokens = read_tokens(run.warm_tokens)
    cells = {t: OpenLoopCell(t, workers, rate, conns) for t in targets}
    run.open_loop.extend(cells.values())
    log(f"open loop: {rate:.0f} req/s ({args.open_loop:g} of ours at saturation), {conns} "
        f"connections, {args.duration:g} s each")  # fmt: skip
    for round_ in range(args.rounds):
        for target in targets if round_ % 2 == 0 else targets[::-1]:
            server = servers[target]
            calls = get_calls(READ_PATH, tokens, scope_header=target == "floor")
            offset, lag_before = log_offset(server.log_path), _loop_lag(server)
            app_before = cpu_times(server.pids())
            db_before = cpu_times(postgres_backends(run.db.name))
            result = fixed_rate(server.url, calls, rate, conns, args.duration)
            sample = OpenLoopSample(
                result,
                cpu_delta(app_before, cpu_times(server.pids())),
                cpu_delta(db_before, cpu_times(postgres_backends(run.db.name))),
            )
            if target == "ours":
                sample.breakdown = read_breakdown(server.log_path, offset, READ_ROUTE)
                lag_after = _loop_lag(server)
                sample.loop_lag = {k: lag_after[k] - lag_before.get(k, 0) for k in lag_after}
            cells[target].samples.append(sample)
            log(
                f"  r{round_ + 1} {target:5} read at {rate:5.0f} req/s w{workers} c{conns:<3} "
                f"{result.rate:7.0f} req/s  p50 {result.p50_ms:6.1f}  p99 {result.p99_ms:6.1f} "
                f"ms  p99 from due {result.p99_due_ms:6.1f} ms  late {result.late}  "
                f"errors {result.errors}  generator "
                f"{result.generator_cpu_s / max(result.requests, 1) * 1e6:.0f} us/req"
            )


def bench_workers(run: Run, workers: int) -> None:
    """All targets up at once, every cell measured once per round, cells interleaved so
    that ours, the peer and the floor are measured next to each other in time."""
    targets = [t for t in TARGETS if t in run.args.targets]
    servers = {t: server_for(run, t, workers) for t in targets}
    if proxy_wanted(run.args):  # the upstream ours forwards to, also measured directly
        targets.append("upstream")
        servers["upstream"] = upstream_server(run, workers)
    scenarios = [s for s in SCENARIOS if s.target in targets and s.name in run.args.scenarios]
    before = {t: tenant_stats(run, t) for t in targets}
    try:
        for target, server in servers.items():
            log(f"starting {target} with {workers} worker(s) on {server.url}")
            server.start()
        if "ours" in servers and cookie_mode(run) and run.session_cookies is None:
            make_sessions(run, servers["ours"])
        cells: list[tuple[Scenario, Measurement]] = []
        for conns in run.args.connections:
            for scenario in sorted(scenarios, key=lambda s: ORDER.index(s.name)):
                cell = Measurement(scenario.target, scenario.name, workers, conns)
                cell.skipped = preflight(run, servers[scenario.target], scenario)
                if cell.skipped:
                    log(f"  skip {scenario.target} {scenario.name}: {cell.skipped}")
                run.measurements.append(cell)
                cells.append((scenario, cell))
        for round_ in range(run.args.rounds):
            for scenario, cell in cells:
                if not cell.skipped:
                    measure(run, servers[scenario.target], cell, scenario, round_)
        if run.args.open_loop > 0:
            measure_open_loop(run, servers, workers)
    finally:
        for target, server in servers.items():
            lifetime = time.monotonic() - server.started_at if server.started_at else 0.0
            server.stop()
            after = tenant_stats(run, target)
            delta = {k: v - before[target].get(k, 0) for k, v in after.items()}
            if "management_busiest" in after:  # a maximum over the tenant's life, not a count
                delta["management_busiest"] = after["management_busiest"]
            run.tenant_counts.append(
                TenantCounts(target, workers, lifetime, {k: v for k, v in delta.items() if v})
            )


def _loop_lag(server: Server) -> dict[str, float]:
    status, body = http_call(server.url + "/metrics")
    return loop_lag(body.decode()) if status == 200 else {}


def make_sessions(run: Run, server: Server) -> None:
    """Sign `--sessions` of the users in through ours and the stand-in tenant, once: the
    sessions live in the database, so the servers of every workers count share them."""
    users = data.make_users(run.args.users)[: run.args.sessions]
    started = time.monotonic()
    try:
        cookies = sessions.make_sessions(server.url, users)
    except (sessions.SignInFailed, OSError) as error:
        log(f"  no cookie sessions: {error}")
        return
    run.session_cookies = run.run_dir / "sessions.tsv"
    sessions.write_cookies(str(run.session_cookies), cookies, users)
    run.first_cookie = cookies[0]
    log(f"  {len(cookies)} cookie sessions signed in in {time.monotonic() - started:.1f}s")


def execute(run: Run) -> None:
    with contextlib.ExitStack() as stack:
        prepare(run, stack)
        run.audit_before = log_size_at(run.db.owner_url)
        log(f"audit log before measuring: {run.audit_before.text()}")
        for workers in run.args.workers:
            bench_workers(run, workers)
        run.audit_after = log_size_at(run.db.owner_url)
        log(f"audit log after measuring: {run.audit_after.text()}")
        if run.args.profile:
            server = server_for(run, "ours", 1)
            stack.callback(server.stop)
            run.profile = profile_read(run, server, run.args.profile)
            if dpop_wanted(run.args):  # the DPoP read's profile too, to set beside it
                run.profile += ["", *profile_read(run, server, run.args.profile, dpop=True)]


def results_json(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "options": {k: v for k, v in vars(run.args).items() if k != "admin_url"},
        "measurements": [asdict(m) for m in run.measurements],
        "open_loop": [asdict(c) for c in run.open_loop],
        "audit_log": {
            "grown": asdict(run.audit_grown) if run.audit_grown else None,
            "before": asdict(run.audit_before) if run.audit_before else None,
            "after": asdict(run.audit_after) if run.audit_after else None,
        },
        "tenant_counts": [asdict(t) for t in run.tenant_counts],
    }
