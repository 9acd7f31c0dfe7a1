"""`python -m bench`: ours, the Auth0 FastAPI peer and the floor, side by side in one run.

One run: a throwaway database (100,000 patients in 1,000 scopes), 1,000 access tokens (one
per user) plus a pool of never-seen tokens, the stand-in tenant, then each server under
uvicorn (uvloop, httptools) with 1 and 2 workers, each scenario driven by wrk at 32 and 64
connections after a warm-up. Everything stops and the database is dropped on the way out,
Ctrl+C and failures included. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import data
from bench.load import WrkResult, run_wrk
from bench.openloop import FixedRateResult, fixed_rate, get_calls, read_tokens
from bench.servers import (
    LOOPBACK,
    Server,
    cpu_delta,
    cpu_times,
    free_port,
    http_call,
    postgres_backends,
)
from bench.waits import WaitSampler

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "bench-tenant.local"
AUDIENCE = "https://bff.bench/api"
CLIENT_ID = "bench-m2m-client"
READ_PATH = "/api/patients?limit=20"
UNREACHABLE_LIMIT = "1000000000/60"
TOKEN_TTL = 86_400  # Auth0's default access-token lifetime for an API
POST_BODY = (
    b'{"given_name":"Ana","family_name":"Preflight","birth_date":"1980-02-03",'
    b'"identifier":{"system":"https://hospital.example.org/fhir/mrn","value":"%s"}}'
)


@dataclass(frozen=True)
class Scenario:
    target: str
    name: str
    method: str
    path: str
    mode: str
    expect: int = 200
    cold: bool = False


SCENARIOS = (
    Scenario("floor", "read", "GET", READ_PATH, "floor_get"),
    Scenario("floor", "insert", "POST", "/api/patients", "floor_post", 201),
    Scenario("peer", "read", "GET", READ_PATH, "get"),
    Scenario("ours", "read", "GET", READ_PATH, "get"),
    Scenario("ours", "read_cookie", "GET", READ_PATH, "cookie_get"),
    Scenario("ours", "read_cold", "GET", READ_PATH, "get", cold=True),
    Scenario("ours", "me", "GET", "/api/me", "get"),
    Scenario("ours", "post", "POST", "/api/patients", "post", 201),
    Scenario("ours", "profile", "GET", "/api/profile", "get"),
)
TARGETS = ("floor", "ours", "peer")
# The order cells are measured in within a round: the reads of all three side by side.
ORDER = ("read", "read_cookie", "read_cold", "me", "profile", "insert", "post")


@dataclass
class Sample:
    """One measured wrk run of a cell (a scenario at some workers and connections)."""

    result: WrkResult
    app_cpu_s: float
    db_cpu_s: float
    waits: dict[str, float]


@dataclass
class Measurement:
    """A cell over the rounds; the report shows medians."""

    target: str
    scenario: str
    workers: int
    connections: int
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None

    def median(self, name: str) -> float:
        if name in ("app_us", "db_us"):
            cpu = "app_cpu_s" if name == "app_us" else "db_cpu_s"
            values = [
                getattr(s, cpu) / s.result.requests * 1e6 for s in self.samples if s.result.requests
            ]
        else:
            values = [getattr(s.result, name) for s in self.samples]
        return statistics.median(values) if values else 0.0

    def total(self, name: str) -> int:
        return sum(getattr(s.result, name) for s in self.samples)


@dataclass
class OpenLoopSample:
    """One fixed-rate run of a read (bench/openloop.py) and the CPU it cost."""

    result: FixedRateResult
    app_cpu_s: float
    db_cpu_s: float


@dataclass
class OpenLoopCell:
    """The read of one target at a fixed rate: half of our saturation throughput (by
    default), the same rate for every target of the same workers."""

    target: str
    workers: int
    rate: float
    connections: int
    samples: list[OpenLoopSample] = field(default_factory=list)

    def median(self, name: str) -> float:
        if name in ("app_us", "db_us", "generator_us"):
            values = [
                {"app_us": s.app_cpu_s, "db_us": s.db_cpu_s,
                 "generator_us": s.result.generator_cpu_s}[name] / s.result.requests * 1e6
                for s in self.samples
                if s.result.requests
            ]  # fmt: skip
        else:
            values = [getattr(s.result, name) for s in self.samples]
        return statistics.median(values) if values else 0.0

    def total(self, name: str) -> int:
        return sum(getattr(s.result, name) for s in self.samples)


@dataclass
class TenantCounts:
    target: str
    workers: int
    seconds: float
    counts: dict[str, int]


@dataclass
class Run:
    args: Any
    run_dir: Path
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    db: Any = None
    tenants: dict[str, Server] = field(default_factory=dict)
    warm_tokens: Path | None = None
    cold_tokens: list[Path] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    open_loop: list[OpenLoopCell] = field(default_factory=list)
    tenant_counts: list[TenantCounts] = field(default_factory=list)
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Cookie sessions (issue 19): the tenant's web application, the service's key, and
    # the session cookies made once the first server of ours is up (bench/sessions.py).
    session_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    session_key: str = field(default_factory=lambda: _fernet_key())
    session_cookies: Path | None = None
    first_cookie: str = ""
    first_token: str = ""
    first_scope: str = ""
    profile: Any = None
    server_version: str = "?"
    git: str = "?"
    audit_grown: Any = None  # bench.auditgrow.Grown, when the log was grown
    audit_before: Any = None  # bench.auditgrow.LogSize when the measurements started
    audit_after: Any = None  # and when they ended


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def cookie_mode(run: Run) -> bool:
    return "read_cookie" in run.args.scenarios and "ours" in run.args.targets


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def base_env() -> dict[str, str]:
    """This environment without any of the service's settings (and no `.env`: cwd is the
    run directory), so nothing from the shell changes what is measured."""
    import os

    from app.core.settings import Settings

    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["PYTHONPATH"] = str(REPO)
    return env


def server_for(run: Run, target: str, workers: int) -> Server:
    tenant = run.tenants[target]
    assert run.db is not None
    port = free_port()
    env = base_env()
    common = ["--host", LOOPBACK, "--port", str(port), "--workers", str(workers)]
    uvicorn = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools"]
    if target == "ours":
        argv = [sys.executable, "-m", "app", "serve", *common]
        env |= {
            "DATABASE_URL": run.db.app_url,
            "MIGRATIONS_DATABASE_URL": run.db.owner_url,
            "AUTH0_DOMAIN": DOMAIN,
            "AUTH0_AUDIENCE": AUDIENCE,
            "AUTH0_CLIENT_ID": CLIENT_ID,
            "AUTH0_CLIENT_SECRET": run.client_secret,
            "AUTH0_BASE_URL": tenant.url,
            "AUTH0_EMAIL_VERIFIED_CLAIM": data.EMAIL_VERIFIED_CLAIM,
            "LOG_LEVEL": "INFO",
            "DB_POOL_MAX_SIZE": str(run.args.pool_max),
            # All the load comes from one address and 1,000 users: limits high enough never
            # to refuse, so the limiter's per-request check is measured but not its 429s.
            "RATE_LIMIT_PER_IP": UNREACHABLE_LIMIT,
            "RATE_LIMIT_PER_USER": UNREACHABLE_LIMIT,
        }
        if cookie_mode(run):  # on for every scenario of ours, so the reads compare alike
            from bench.sessions import SESSION_CLIENT_ID

            env |= {
                "SESSION_CLIENT_ID": SESSION_CLIENT_ID,
                "SESSION_CLIENT_SECRET": run.session_secret,
                "PUBLIC_URL": f"http://{LOOPBACK}:{port}",
                "SESSION_ENCRYPTION_KEY": run.session_key,
            }
        env |= dict(item.split("=", 1) for item in run.args.service_env)
    elif target == "peer":
        argv = [*uvicorn, "bench.peers.fastapi_auth0:app", *common]
        env |= {"AUTH0_DOMAIN": DOMAIN, "AUTH0_AUDIENCE": AUDIENCE}
    else:
        argv = [*uvicorn, "bench.floor:app", "--no-access-log", *common]
    env |= {
        "BENCH_DATABASE_URL": run.db.app_url,
        "BENCH_TENANT_URL": tenant.url,
        "BENCH_POOL_MAX_SIZE": str(run.args.pool_max),
    }
    log_path = run.run_dir / f"{target}-w{workers}.log"
    return Server(target, argv, env, port, workers, log_path, run.run_dir)


def tenant_stats(run: Run, target: str) -> dict[str, int]:
    status, body = http_call(run.tenants[target].url + "/dev/stats")
    return dict(json.loads(body)) if status == 200 else {}


def preflight(run: Run, server: Server, scenario: Scenario) -> str | None:
    """None when one request gets the expected status, else why the scenario is skipped."""
    headers = {"Authorization": f"Bearer {run.first_token}"}
    if scenario.mode == "cookie_get":
        headers = {"Cookie": f"__Host-bff_session={run.first_cookie}", "X-CSRF": "1"}
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
        run_wrk(url, warm_tokens, warm_mode, tag + "-warm", connections=conns,
                seconds=args.warmup)  # fmt: skip
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
            app_before = cpu_times(server.pids())
            db_before = cpu_times(postgres_backends(run.db.name))
            result = fixed_rate(server.url, calls, rate, conns, args.duration)
            sample = OpenLoopSample(
                result,
                cpu_delta(app_before, cpu_times(server.pids())),
                cpu_delta(db_before, cpu_times(postgres_backends(run.db.name))),
            )
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
    scenarios = [s for s in SCENARIOS if s.target in targets and s.name in run.args.scenarios]
    servers = {t: server_for(run, t, workers) for t in targets}
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
            run.tenant_counts.append(
                TenantCounts(target, workers, lifetime, {k: v for k, v in delta.items() if v})
            )


def make_sessions(run: Run, server: Server) -> None:
    """Sign `--sessions` of the users in through ours and the stand-in tenant, once: the
    sessions live in the database, so the servers of every workers count share them."""
    from bench.sessions import SignInFailed, make_sessions, write_cookies

    users = data.make_users(run.args.users)[: run.args.sessions]
    started = time.monotonic()
    try:
        cookies = make_sessions(server.url, users)
    except (SignInFailed, OSError) as error:
        log(f"  no cookie sessions: {error}")
        return
    run.session_cookies = run.run_dir / "sessions.tsv"
    write_cookies(str(run.session_cookies), cookies, users)
    run.first_cookie = cookies[0]
    log(f"  {len(cookies)} cookie sessions signed in in {time.monotonic() - started:.1f}s")


def execute(run: Run) -> None:
    from bench.auditgrow import log_size_at
    from bench.prepare import prepare

    with contextlib.ExitStack() as stack:
        prepare(run, stack)
        run.audit_before = log_size_at(run.db.owner_url)
        log(f"audit log before measuring: {run.audit_before.text()}")
        for workers in run.args.workers:
            bench_workers(run, workers)
        run.audit_after = log_size_at(run.db.owner_url)
        log(f"audit log after measuring: {run.audit_after.text()}")
        if run.args.profile:
            from bench.profile import profile_read

            server = server_for(run, "ours", 1)
            stack.callback(server.stop)
            run.profile = profile_read(run, server, run.args.profile)


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
