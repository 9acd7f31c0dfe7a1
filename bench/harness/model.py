"""What a run of `python -m bench` is and what it measures: the scenarios and targets, each
measured cell and its samples, and the run itself with everything it made on the way."""

from __future__ import annotations

import secrets
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.kit.breakdown import Breakdown
from bench.kit.openloop import FixedRateResult
from bench.kit.servers import Server
from bench.kit.wrk import WrkResult

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "bench-tenant.local"
AUDIENCE = "https://bff.bench/api"
CLIENT_ID = "bench-m2m-client"
READ_PATH = "/api/patients?limit=20"
READ_ROUTE = "/api/patients"  # its route template, as the service logs it
# The proxy scenario: ours forwards to the stand-in upstream (devkit/upstream.py) with the
# caller's own token (a `user` route of the service's audience); the same call made to the
# upstream directly is measured beside it.
PROXY_ROUTE = "bench"
PROXY_PATH = f"/remote/{PROXY_ROUTE}/whoami"
UPSTREAM_PATH = "/whoami"
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
    Scenario("ours", "read_dpop", "GET", READ_PATH, "dpop_get"),
    Scenario("ours", "read_cold", "GET", READ_PATH, "get", cold=True),
    Scenario("ours", "me", "GET", "/api/me", "get"),
    Scenario("ours", "post", "POST", "/api/patients", "post", 201),
    Scenario("ours", "profile", "GET", "/api/profile", "get"),
    Scenario("ours", "proxy", "GET", PROXY_PATH, "get"),
    Scenario("upstream", "proxy", "GET", UPSTREAM_PATH, "get"),
    # `--base DIR`: the service of another checkout, measured beside ours in the same run.
    Scenario("base", "read", "GET", READ_PATH, "get"),
    Scenario("base", "read_dpop", "GET", READ_PATH, "dpop_get"),
    Scenario("base", "post", "POST", "/api/patients", "post", 201),
    Scenario("base", "profile", "GET", "/api/profile", "get"),
)
TARGETS = ("floor", "ours", "base", "peer")
# The order cells are measured in within a round: the reads of all three side by side.
ORDER = (
    "read",
    "read_dpop",
    "read_cookie",
    "read_cold",
    "me",
    "profile",
    "insert",
    "post",
    "proxy",
)


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
    """One fixed-rate run of a read (bench/kit/openloop.py) and the CPU it cost."""

    result: FixedRateResult
    app_cpu_s: float
    db_cpu_s: float
    # Ours only: where the server's time went (its access log) and its event loop's lag.
    breakdown: Breakdown | None = None
    loop_lag: dict[str, float] | None = None


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
    # Cookie sessions: the tenant's web application, the service's key, and the session
    # cookies made once the first server of ours is up (bench/harness/sessions.py).
    session_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    session_key: str = field(default_factory=lambda: _fernet_key())
    session_cookies: Path | None = None
    dpop: Any = None  # bench.harness.proofs.Clients, when read_dpop is measured
    first_cookie: str = ""
    first_token: str = ""
    first_scope: str = ""
    profile: Any = None
    server_version: str = "?"
    git: str = "?"
    base_git: str | None = None  # `--base DIR`: the commit of that checkout
    audit_grown: Any = None  # bench.auditlog.grow.Grown, when the log was grown
    audit_before: Any = None  # bench.auditlog.tables.LogSize when the measurements started
    audit_after: Any = None  # and when they ended
    upstream_port: int = 0  # the proxy scenario's upstream, fixed for the run


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def dpop_wanted(args: Any) -> bool:
    return "read_dpop" in args.scenarios and "ours" in args.targets


def proxy_wanted(args: Any) -> bool:
    return "proxy" in args.scenarios and "ours" in args.targets


def cookie_mode(run: Run) -> bool:
    return "read_cookie" in run.args.scenarios and "ours" in run.args.targets


def find_cell(run: Run, target: str, scenario: str, workers: int, conns: int) -> Measurement | None:
    for m in run.measurements:
        key = (m.target, m.scenario, m.workers, m.connections)
        if key == (target, scenario, workers, conns) and m.samples:
            return m
    return None


def throughput_ratio(
    a: Measurement | None, b: Measurement | None
) -> tuple[float, float, float] | None:
    """Ratio of the median throughputs, and the lowest and highest per-round ratio."""
    if a is None or b is None or not b.median("rps"):
        return None
    rounds = [
        x.result.rps / y.result.rps for x, y in zip(a.samples, b.samples, strict=False)
        if y.result.rps
    ]  # fmt: skip
    ratio = a.median("rps") / b.median("rps")
    return ratio, min(rounds, default=ratio), max(rounds, default=ratio)


def verdict(value: tuple[float, float, float] | None, target: float) -> str:
    if value is None:
        return "n/a"
    ratio, low, high = value
    spread = f" [{low:.2f}..{high:.2f}]" if high - low > 0.005 else ""
    return f"{ratio:.2f}{spread} {'met' if ratio >= target else 'MISSED'}"
