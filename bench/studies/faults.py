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
published ahead), jwks-rotation-unannounced, sigterm. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from app.auth0.client import JITTER_SECONDS, MAX_ATTEMPTS
from bench.kit.faultstack import Report, Stack, count_stored, log, make_call, running_stack
from bench.kit.loadgen import Answer, Call, Load
from bench.kit.loopback import http_call
from bench.kit.pgcluster import PrivateCluster
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


def _mixed(stack: Stack, kinds: Sequence[str], tokens: Sequence[str]) -> Callable[[int], Call]:
    def call(n: int) -> Call:
        return make_call(kinds[n % len(kinds)], tokens[n % len(tokens)], f"{stack.run_id}-{n}")

    return call


async def _under_load(load: Load, steps: Callable[[], Awaitable[None]], grace: float) -> None:
    """Run the load, run `steps` (sleeps and faults) beside it, then stop the load."""
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop, grace))
    try:
        await steps()
    finally:
        stop.set()
        await task


def _of(answers: list[Answer], *names: str) -> list[Answer]:
    return [a for a in answers if a.name in names]


def _recovery(
    report: Report, answers: list[Answer], cleared: float, end: float, within: float
) -> None:
    """How long after `cleared` the last failure started (at most `within` seconds); the
    final second all 2xx."""
    failed = [a.started for a in answers if not (a.status and 200 <= a.status < 300)]
    last = max((t for t in failed if t >= cleared), default=cleared)
    report.figures["recovered after"] = f"{last - cleared:.1f} s (last failure after the fault)"
    report.check(f"recovered within {within:g} s of the fault's end", last - cleared <= within)
    final = [a for a in answers if a.started >= end - 1.0]
    report.check(
        "answers 2xx again after the fault, without a restart (final second all 2xx)",
        bool(final) and all(a.status and 200 <= a.status < 300 for a in final),
    )


def _common_checks(report: Report, load: Load, allowed: set[int]) -> None:
    stuck = load.pending
    odd = [a for a in load.answers if a.status not in allowed]
    bare = [a for a in load.answers if a.status == 503 and not a.retry_after]
    report.figures["still pending at the end"] = stuck
    report.check(
        f"no status outside {sorted(allowed)} and no transport error ({len(odd)})", not odd
    )
    report.check(f"every 503 carries Retry-After ({len(bare)} without)", not bare)
    report.check(f"no stuck request ({stuck} pending)", stuck == 0)


# --- postgres-restart --------------------------------------------------------------------


async def postgres_restart(
    stack: Stack, cluster: PrivateCluster, seconds: float, down: float = 2.0, mode: str = "fast"
) -> Report:
    """`mode` is pg_ctl's stop mode: `fast` (a clean restart) or `immediate` (a crash, then
    WAL recovery on start)."""
    report = Report("postgres-restart" if mode == "fast" else "postgres-crash")
    load = Load(
        stack.service.url, _mixed(stack, ("post", "read"), stack.tokens()), CONCURRENCY, RATE
    )
    pid = stack.service.proc.pid if stack.service.proc else None
    times: dict[str, float] = {}

    async def steps() -> None:
        await asyncio.sleep(seconds)
        times["stopped"], times["started"] = await asyncio.to_thread(cluster.restart, down, mode)
        await asyncio.sleep(seconds)
        times["end"] = time.monotonic()

    await _under_load(load, steps, grace=30)
    answers = load.answers
    report.summary("all requests", answers)
    report.summary("POST /api/patients", _of(answers, "post"))
    report.summary("GET /api/patients", _of(answers, "read"))
    report.figures["Postgres down"] = f"{times['started'] - times['stopped']:.1f} s ({mode} stop)"
    stored = await count_stored(stack.db.owner_url, answers)
    report.figures["201s / rows / events"] = (
        f"{stored.created} / {stored.rows} / {stored.events} "
        f"(table holds {stored.all_rows} rows, {stored.all_events} events)"
    )
    report.figures["rows lost"] = stored.lost
    _common_checks(report, load, {200, 201, 503})
    report.check("the outage was seen (some 503s)", any(a.status == 503 for a in answers))
    report.check(
        "every 201 has its row and its patient.created event (rows lost: 0)", stored.lost == 0
    )
    report.check("no row without its audit event", stored.all_rows == stored.all_events)
    _recovery(report, answers, times["started"], times["end"], within=2.0)
    alive = stack.service.proc is not None and stack.service.proc.poll() is None
    report.check("the same service process throughout", alive and pid in stack.service.pids())
    return report


# --- tenant-slow, tenant-down, tenant-429 ------------------------------------------------


async def tenant_fault(stack: Stack, kind: str, seconds: float, env: dict[str, str]) -> Report:
    report = Report(f"tenant-{kind}")
    load = Load(
        stack.service.url, _mixed(stack, ("profile", "read"), stack.tokens()), CONCURRENCY, RATE
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
    await _under_load(load, steps, grace=bound + 5)
    profile, reads = _of(load.answers, "profile"), _of(load.answers, "read")
    report.figures["fault"] = f"{kind} for {times['off'] - times['on']:.1f} s" + (
        f" ({json.dumps(fault[kind])})" if kind in fault else " (tenant process stopped)"
    )
    report.summary("GET /api/profile", profile)
    during = [a for a in profile if times["on"] <= a.started < times["off"]]
    found = report.summary("  during the fault", during)
    report.summary("GET /api/patients", reads)
    worst = max((a.seconds for a in load.answers), default=0.0)
    _common_checks(report, load, {200, 503})
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
    _recovery(report, profile, times["off"], times["end"], within=cooldown + 2.0)
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

    await _under_load(load, steps, grace=30)
    answers = load.answers
    old = [a for a in answers if a.name.endswith("/old")]
    new = [a for a in answers if a.name.endswith("/new")]
    report.summary("old-key tokens", old)
    report.summary("new-key tokens", new)
    unauthorized = [a for a in answers if a.status == 401]
    if unauthorized:
        last = max(a.started for a in unauthorized) - times["rotated"]
        report.figures["401s"] = f"{len(unauthorized)}, the last {last:.1f} s after the rotation"
    _common_checks(report, load, {200})
    report.check(f"no 401 for tokens of either key ({len(unauthorized)})", not unauthorized)
    report.check("tokens of the new key were tried", bool(new))
    return report


# --- sigterm -----------------------------------------------------------------------------


async def sigterm(stack: Stack, seconds: float) -> Report:
    """SIGTERM while requests are in flight (the tenant is made slow, so GET /api/profile
    requests are in flight for 1.5 s at any moment): they must complete, new connections
    must be refused, and the process must exit 0."""
    report = Report("sigterm")
    proc = stack.service.proc
    assert proc is not None
    load = Load(
        stack.service.url,
        _mixed(stack, ("read", "profile", "me"), stack.tokens()),
        CONCURRENCY,
        RATE,
    )
    times: dict[str, float] = {}
    codes: list[int | None] = []

    async def steps() -> None:
        await asyncio.sleep(seconds / 2)  # warm: JWKS and M2M token fetched at full speed
        await asyncio.to_thread(stack.tenant_post, "/dev/fault", SLOW_1_5)
        await asyncio.sleep(seconds / 2)
        times["term"] = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        codes.append(await asyncio.to_thread(proc.wait, 30))
        times["exited"] = time.monotonic()
        await asyncio.sleep(1.0)

    await _under_load(load, steps, grace=10)
    term, exited = times["term"], times["exited"]
    before = [a for a in load.answers if a.started < term]
    in_flight = [a for a in before if a.started + a.seconds > term]
    late = [a for a in load.answers if a.started >= term]
    refused = [a for a in late if a.error == "ConnectError"]
    report.summary("sent before SIGTERM", before)
    report.summary("  of which in flight at SIGTERM", in_flight)
    report.summary("sent after SIGTERM", late)
    report.figures["drain (SIGTERM to exit)"] = f"{exited - term:.2f} s"
    report.figures["exit code"] = codes[0] if codes else "did not exit"
    broken = [a for a in before if a.status is None]
    served_late = [a for a in late if a.status is not None]
    after_exit_odd = [a for a in late if a.started >= exited and a.error != "ConnectError"]
    reset = [a for a in late if a.status is None and a.error != "ConnectError"]
    report.figures["after SIGTERM: served / refused / reset"] = (
        f"{len(served_late)} / {len(refused)} / {len(reset)}"
    )
    report.check(
        f"{len(in_flight)} requests in flight at SIGTERM (> 0) all completed",
        bool(in_flight) and all(a.status == 200 for a in in_flight),
    )
    report.check(f"no request sent before SIGTERM lost its answer ({len(broken)})", not broken)
    report.check("new connections refused after SIGTERM (some ConnectError)", bool(refused))
    report.check("nothing but refusals once it exited", not after_exit_odd)
    report.check(
        "no 5xx among the answers", not [a for a in load.answers if a.status and a.status >= 500]
    )
    report.check("exit code 0", codes == [0])
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
        if name == "sigterm":
            # No copy is ever young enough to serve: every profile read waits for the tenant,
            # which the scenario makes slow, so requests are in flight at the signal.
            env.setdefault("PROFILE_CACHE_SECONDS", "0")
            env.setdefault("PROFILE_MAX_STALE_SECONDS", "0.001")
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
