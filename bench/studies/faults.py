"""`python -m bench.studies.faults [--scenario NAME] [--seconds N]`: faults injected under load.

Each scenario starts a throwaway stack (`bench.kit.faultstack`), drives it with
`bench.kit.loadgen`, injects one fault in the middle of the load, and checks what the
service must do through it: only documented statuses, 503s with `Retry-After`, bounded
latency, recovery without a restart, nothing stuck, and, for writes, a row and an audit
event in the database for every 201. Every scenario prints its figures and a PASS/FAIL
per criterion; the exit status is 1 when any criterion fails. The 10-minute soak is
`python -m bench.studies.soak`.

Scenarios: postgres-restart and postgres-crash (a private cluster, never the shared
server), tenant-slow, tenant-down, tenant-429, jwks-rotation (Auth0's way: the new key was
published ahead), jwks-rotation-unannounced, sigterm, sigterm-drain and sigterm-drain-workers
(bench/studies/sigterm.py). See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.auth0.client import JITTER_SECONDS, MAX_ATTEMPTS
from bench.kit.faultstack import (
    Report,
    Stack,
    common_checks,
    count_stored,
    log,
    make_call,
    mixed_calls,
    of_kind,
    recovery,
    running_stack,
    under_load,
)
from bench.kit.loadgen import Call, Load
from bench.kit.loopback import http_call
from bench.kit.pgcluster import PrivateCluster
from bench.studies.sigterm import sigterm, sigterm_drain
from devkit.db import LOCAL_SERVER_URL

CONCURRENCY = 16
RATE = 300.0  # requests per second in all: the machine is shared, the point is the fault
AUTH0_TIMEOUT = 3.0  # the service's defaults (app/core/settings.py), restated for the bound
AUTH0_BUDGET = 3.0
SLOW_1_5 = b'{"mode": "slow", "seconds": 1.5}'


def _bound_seconds(env: dict[str, str]) -> float:
    """The longest one Auth0 call may take (app/auth0/client.py): every attempt up to its timeout,
    plus the summed waits (the budget) and their jitter; one second for the rest."""
    timeout = float(env.get("AUTH0_TIMEOUT_SECONDS", AUTH0_TIMEOUT))
    budget = float(env.get("AUTH0_RETRY_BUDGET_SECONDS", AUTH0_BUDGET))
    return MAX_ATTEMPTS * timeout + budget + JITTER_SECONDS + 1.0


# --- postgres-restart --------------------------------------------------------------------


async def postgres_restart(
    stack: Stack, cluster: PrivateCluster, seconds: float, down: float = 2.0, mode: str = "fast"
) -> Report:
    """`mode` is pg_ctl's stop mode: `fast` (a clean restart) or `immediate` (a crash, then
    WAL recovery on start)."""
    report = Report("postgres-restart" if mode == "fast" else "postgres-crash")
    load = Load(
        stack.service.url, mixed_calls(stack, ("post", "read"), stack.tokens()), CONCURRENCY, RATE
    )
    pid = stack.service.proc.pid if stack.service.proc else None
    times: dict[str, float] = {}

    async def steps() -> None:
        await asyncio.sleep(seconds)
        times["stopped"], times["started"] = await asyncio.to_thread(cluster.restart, down, mode)
        await asyncio.sleep(seconds)
        times["end"] = time.monotonic()

    await under_load(load, steps, grace=30)
    answers = load.answers
    report.summary("all requests", answers)
    report.summary("POST /api/patients", of_kind(answers, "post"))
    report.summary("GET /api/patients", of_kind(answers, "read"))
    report.figures["Postgres down"] = f"{times['started'] - times['stopped']:.1f} s ({mode} stop)"
    stored = await count_stored(stack.db.owner_url, answers)
    report.figures["201s / rows / events"] = (
        f"{stored.created} / {stored.rows} / {stored.events} "
        f"(table holds {stored.all_rows} rows, {stored.all_events} events)"
    )
    report.figures["rows lost"] = stored.lost
    common_checks(report, load, {200, 201, 503})
    report.check("the outage was seen (some 503s)", any(a.status == 503 for a in answers))
    report.check(
        "every 201 has its row and its patient.created event (rows lost: 0)", stored.lost == 0
    )
    report.check("no row without its audit event", stored.all_rows == stored.all_events)
    recovery(report, answers, times["started"], times["end"], within=2.0)
    alive = stack.service.proc is not None and stack.service.proc.poll() is None
    report.check("the same service process throughout", alive and pid in stack.service.pids())
    return report


# --- tenant-slow, tenant-down, tenant-429 ------------------------------------------------


async def tenant_fault(stack: Stack, kind: str, seconds: float, env: dict[str, str]) -> Report:
    report = Report(f"tenant-{kind}")
    load = Load(
        stack.service.url,
        mixed_calls(stack, ("profile", "read"), stack.tokens()),
        CONCURRENCY,
        RATE,
    )
    cooldown = float(env.get("AUTH0_BREAKER_COOLDOWN_SECONDS", 10))
    times: dict[str, float] = {}
    fault = {"slow": {"mode": "slow", "seconds": 2.0}, "429": {"mode": "429", "retry_after": 2}}

    async def steps() -> None:
        await asyncio.sleep(seconds)
        times["on"] = time.monotonic()
        if kind == "down":
            await asyncio.to_thread(stack.tenant.stop)
        else:
            await asyncio.to_thread(
                stack.tenant_post, "/dev/fault", json.dumps(fault[kind]).encode()
            )
        await asyncio.sleep(seconds)
        if kind == "down":
            await asyncio.to_thread(stack.tenant.start)
        else:
            await asyncio.to_thread(stack.tenant_post, "/dev/fault", b'{"mode": "none"}')
        times["off"] = time.monotonic()
        await asyncio.sleep(max(seconds, cooldown + 2))
        times["end"] = time.monotonic()

    bound = _bound_seconds(env)
    refused_before = _refreshes_refused(stack)
    await under_load(load, steps, grace=bound + 5)
    profile, reads = of_kind(load.answers, "profile"), of_kind(load.answers, "read")
    report.figures["fault"] = f"{kind} for {times['off'] - times['on']:.1f} s" + (
        f" ({json.dumps(fault[kind])})" if kind in fault else " (tenant process stopped)"
    )
    report.summary("GET /api/profile", profile)
    during = [a for a in profile if times["on"] <= a.started < times["off"]]
    found = report.summary("  during the fault", during)
    report.summary("GET /api/patients", reads)
    worst = max((a.seconds for a in load.answers), default=0.0)
    common_checks(report, load, {200, 503})
    report.check(f"max latency {worst:.2f} s within the Auth0 bound {bound:.2f} s", worst <= bound)
    report.check("GET /api/patients unaffected (all 2xx)", all(a.status == 200 for a in reads))
    if kind == "down":
        # The profile page serves the shared copies it holds; only their refreshes fail.
        refused = _refreshes_refused(stack) - refused_before
        report.figures["profile refreshes the down tenant refused"] = refused
        report.check("the fault was seen (profile refreshes refused during it)", refused > 0)
        report.check(
            "the profile page kept serving its copies during the fault (all 2xx)",
            bool(during) and found.ok == found.requests,
        )
    else:
        faulted = json.loads(http_call(stack.tenant.url + "/dev/stats")[1]).get("faulted", 0)
        report.figures["tenant answers faulted"] = faulted
        report.check("the fault was seen (the tenant faulted some answers)", faulted > 0)
    # An open breaker answers 503 for its whole cool-down, even once the tenant is back.
    recovery(report, profile, times["off"], times["end"], within=cooldown + 2.0)
    return report


def _refreshes_refused(stack: Stack) -> int:
    """Profile fetches the service gave up on as Auth0 unavailable (its /metrics)."""
    status, body = http_call(stack.service.url + "/metrics")
    if status != 200:
        return 0
    wanted = 'auth0_calls_total{operation="users.get",outcome="unavailable"}'
    for line in body.decode().splitlines():
        if line.startswith(wanted):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


# --- jwks-rotation -----------------------------------------------------------------------


async def jwks_rotation(stack: Stack, seconds: float, *, announced: bool = True) -> Report:
    """Rotate the tenant's signing key during load, then load with tokens of both keys.

    `announced`: as Auth0 does, the new key was published (as the next key) before it signs
    anything. Otherwise it signs the moment it is published, so the service only learns it
    by refetching the JWKS, at most once per JWKS_COOLDOWN_SECONDS (app/auth/tokens.py)."""
    report = Report("jwks-rotation" + ("" if announced else "-unannounced"))
    tokens = [("old", t) for t in stack.tokens()]
    kinds = ("me", "read")

    def call(n: int) -> Call:
        key, token = tokens[n % len(tokens)]
        made = make_call(kinds[n % len(kinds)], token, f"{stack.run_id}-{n}")
        return Call(f"{made.name}/{key}", made.method, made.path, made.headers, made.body)

    load = Load(stack.service.url, call, CONCURRENCY, RATE)
    times: dict[str, float] = {}

    async def steps() -> None:
        await asyncio.sleep(seconds)
        body = json.dumps({"announced": announced}).encode()
        rotated = await asyncio.to_thread(stack.tenant_post, "/dev/rotate", body)
        times["rotated"] = time.monotonic()
        report.figures["published kids"] = ", ".join(map(str, rotated["published"]))  # type: ignore[call-overload]
        fresh = []
        for n in range(len(tokens)):
            body = {"sub": f"auth0|fault-{n}", "permissions": ["read:patients"]}
            minted = await asyncio.to_thread(
                stack.tenant_post, "/dev/token", json.dumps(body).encode()
            )
            fresh.append(("new", str(minted["access_token"])))
        tokens[:] = [t for pair in zip(tokens, fresh, strict=True) for t in pair]
        await asyncio.sleep(2 * seconds)

    await under_load(load, steps, grace=30)
    answers = load.answers
    old = [a for a in answers if a.name.endswith("/old")]
    new = [a for a in answers if a.name.endswith("/new")]
    report.summary("old-key tokens", old)
    report.summary("new-key tokens", new)
    unauthorized = [a for a in answers if a.status == 401]
    if unauthorized:
        last = max(a.started for a in unauthorized) - times["rotated"]
        report.figures["401s"] = f"{len(unauthorized)}, the last {last:.1f} s after the rotation"
    common_checks(report, load, {200})
    report.check(f"no 401 for tokens of either key ({len(unauthorized)})", not unauthorized)
    report.check("tokens of the new key were tried", bool(new))
    return report


# --- command line ------------------------------------------------------------------------

SCENARIOS = (
    "postgres-restart",
    "postgres-crash",
    "tenant-slow",
    "tenant-down",
    "tenant-429",
    "jwks-rotation",
    "jwks-rotation-unannounced",
    "sigterm",
    "sigterm-drain",
    "sigterm-drain-workers",
)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bff-faults-") as directory:
        yield Path(directory)


def run_scenario(
    name: str, seconds: float, admin_url: str = LOCAL_SERVER_URL, env: dict[str, str] | None = None
) -> Report:
    """Start a stack, run one scenario on it, stop it; the report says what happened."""
    env = dict(env or {})
    with _workdir() as workdir:
        if name.startswith("postgres-"):
            mode = "fast" if name == "postgres-restart" else "immediate"
            with PrivateCluster() as cluster, running_stack(cluster.admin_url, workdir, env) as s:
                return asyncio.run(postgres_restart(s, cluster, seconds, mode=mode))
        if name.startswith("tenant-"):
            # Every profile read is stale, so each asks for a refresh that reaches the tenant.
            env.setdefault("PROFILE_CACHE_SECONDS", "0")
            with running_stack(admin_url, workdir, env) as stack:
                return asyncio.run(tenant_fault(stack, name.removeprefix("tenant-"), seconds, env))
        if name.startswith("sigterm"):
            # No copy is ever young enough to serve: every profile read waits for the tenant,
            # which the scenario makes slow, so requests are in flight at the signal.
            env.setdefault("PROFILE_CACHE_SECONDS", "0")
            env.setdefault("PROFILE_MAX_STALE_SECONDS", "0.001")
        if name.startswith("sigterm-drain"):
            env.setdefault("SHUTDOWN_DRAIN_SECONDS", f"{max(1.5, seconds / 2):g}")
            workers = 2 if name.endswith("-workers") else 1
            with running_stack(admin_url, workdir, env, workers=workers) as stack:
                drain = float(env["SHUTDOWN_DRAIN_SECONDS"])
                return asyncio.run(sigterm_drain(stack, seconds, drain, workers))
        with running_stack(admin_url, workdir, env) as stack:
            if name.startswith("jwks-rotation"):
                announced = name == "jwks-rotation"
                return asyncio.run(jwks_rotation(stack, seconds, announced=announced))
            if name == "sigterm":
                return asyncio.run(sigterm(stack, seconds))
    raise ValueError(f"unknown scenario {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.faults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument(
        "--admin-url",
        default=LOCAL_SERVER_URL,
        help="a loopback Postgres where databases may be created",
    )
    parser.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.service_env)
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    reports = []
    for name in names:
        log(f"{name}: {args.seconds:g} s phases")
        reports.append(run_scenario(name, args.seconds, args.admin_url, env))
        print(reports[-1].render(), flush=True)
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
