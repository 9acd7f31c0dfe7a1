"""`python -m bench.failover [--seconds N] [--only NAME]`: a Postgres primary switch and a
rolling restart under load, with real processes only, all on 127.0.0.1 (docs/reliability.md,
docs/high-availability.md).

A Patroni cluster of two nodes (`bench/kit/patroni.py`: etcd, `synchronous_mode: true`),
HAProxy routing to its leader by Patroni's REST check (`bench/kit/haproxy.py`), and two
copies of the service under a steady mixed load (patient searches, creations, profile
changes), every request with its own id. The standby is made to lag (the leader's WAL
senders stopped for a second, as a standby in another zone lags under load), then the leader is
killed (Patroni, its postmaster and its backends, SIGKILL); once the old leader is back as
a standby, a planned `patronictl switchover` returns the lead to it. Each run prints the
time without service, the failed requests and their statuses (only 503 allowed), the
acknowledged writes missing afterwards (must be 0), the audit chains walked intact and an
auditor's export verified offline, and whether a logout on one copy is refused on the other
after the switch.

Runs: `haproxy` (the copies reach the leader through HAProxy), `multi-host` (straight to
the nodes with a multi-host DATABASE_URL), `async` (`synchronous_mode: false`: what an
acknowledged write may lose), and `rolling` (bench/studies/rolling.py). The exit status is
1 when a criterion fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import psutil  # type: ignore[import-untyped]

from bench.kit.auditcheck import verify_chains, verify_export
from bench.kit.copies import Copies, check_ledger, running_copies
from bench.kit.faultstack import Report, log
from bench.kit.haproxy import HAProxy, free_port, postgres_section
from bench.kit.loadgen import Answer, Load
from bench.kit.loopback import LOOPBACK, http_call
from bench.kit.patroni import Node, PatroniCluster
from bench.studies.rolling import rolling_restart

KINDS = ("read", "post", "update", "read")
CONCURRENCY = 8  # per copy
RATE = 100.0  # per copy, requests per second: the machine is shared
BACK_WITHIN = 10.0  # seconds from the promotion to service
LAG_SECONDS = 1.0  # how long the standby receives nothing before the leader is killed


def outage(
    report: Report, label: str, answers: list[Answer], fault: float, promoted: float
) -> None:
    """Figures and criteria of one switch: the answers started from `fault` on."""
    after = sorted((a for a in answers if a.started + a.seconds >= fault), key=lambda a: a.started)
    failed = [a for a in after if not (a.status and 200 <= a.status < 300)]
    statuses: dict[str, int] = {}
    for a in failed:
        name = str(a.status) if a.status is not None else a.error or "?"
        statuses[name] = statuses.get(name, 0) + 1
    first = failed[0].started if failed else None
    last_end = max((a.started + a.seconds for a in failed), default=fault)
    back = next((a.started for a in after if a.status and a.started > last_end - 1e-3), None)
    report.figures[f"{label}: promoted after"] = f"{promoted - fault:.1f} s"
    report.figures[f"{label}: failed requests"] = f"{len(failed)} of {len(after)}: " + (
        ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "none"
    )
    if first is not None and back is not None:
        report.figures[f"{label}: time without service"] = (
            f"{back - first:.1f} s (first failure to first success after the last failure); "
            f"service back {back - promoted:.1f} s after the promotion"
        )
    bare = [a for a in failed if a.status == 503 and not a.retry_after]
    report.check(
        f"{label}: failed requests only 503 with Retry-After ({len(failed) - len(bare)}"
        f" of {len(failed)})",
        all(a.status == 503 and a.retry_after for a in failed),
    )
    report.check(
        f"{label}: service back within {BACK_WITHIN:g} s of the promotion",
        back is not None and back - promoted <= BACK_WITHIN,
    )


def logout_spreads(copies: Copies) -> tuple[bool, str]:
    """A token signed out on the first copy is refused by the second (its revocation
    listener has found the new primary)."""
    first, second = copies.servers[0], copies.servers[1]
    token = copies.minter.mint(
        f"auth0|logout-{time.monotonic_ns()}", permissions=("read:patients",), email_verified=True
    )
    auth = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 15
    while http_call(second.url + "/api/patients?limit=1", headers=auth)[0] != 200:
        if time.monotonic() > deadline:
            return False, "the token was never accepted"
        time.sleep(0.2)
    while http_call(first.url + "/api/logout", method="POST", headers=auth)[0] not in (200, 204):
        if time.monotonic() > deadline:
            return False, "the logout never succeeded"
        time.sleep(0.2)
    signed_out = time.monotonic()
    while http_call(second.url + "/api/patients?limit=1", headers=auth)[0] != 401:
        if time.monotonic() - signed_out > 10:
            return False, "still accepted on the other copy 10 s after the logout"
        time.sleep(0.05)
    return True, f"refused on the other copy {time.monotonic() - signed_out:.2f} s after it"


async def failover_run(
    name: str, cluster: PatroniCluster, admin_url: str, seconds: float, switch_back: bool
) -> Report:
    report = Report(f"failover-{name}")
    times: dict[str, float] = {}
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    with tempfile.TemporaryDirectory(prefix="bff-failover-") as directory:
        workdir = Path(directory)
        with running_copies(admin_url, workdir, 2) as copies:
            loads = [
                Load(server.url, copies.calls(n, KINDS), CONCURRENCY, RATE)
                for n, server in enumerate(copies.servers)
            ]
            stop = asyncio.Event()
            tasks = [asyncio.create_task(load.run(stop, 30)) for load in loads]
            try:
                await asyncio.sleep(seconds)
                old = cluster.leader()
                assert old is not None
                # The standby a second behind, as one in another zone under load is at times:
                # the leader's WAL senders stopped for LAG_SECONDS before it dies, so what
                # they had not sent dies with it.
                for sender in old.walsenders():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        sender.send_signal(signal.SIGSTOP)
                await asyncio.sleep(LAG_SECONDS)
                report.figures["standby behind the leader at the kill"] = await _lag(old)
                times["kill"] = time.monotonic()
                await asyncio.to_thread(old.kill)
                times["promoted"] = await asyncio.to_thread(_new_leader, cluster, old)
                await asyncio.sleep(seconds)
                await asyncio.to_thread(old.start, cluster.user)
                await asyncio.to_thread(cluster.wait_healthy)
                spread = await asyncio.to_thread(logout_spreads, copies)
                report.figures["logout after the failover"] = spread[1]
                report.check("failover: a logout on one copy is refused on the other", spread[0])
                if switch_back:
                    await asyncio.sleep(seconds / 2)
                    times["switch"] = time.monotonic()
                    await asyncio.to_thread(cluster.switchover, old)
                    times["switched"] = await asyncio.to_thread(_leader_is, cluster, old)
                    await asyncio.sleep(seconds)
                    spread = await asyncio.to_thread(logout_spreads, copies)
                    report.figures["logout after the switchover"] = spread[1]
                    report.check(
                        "switchover: a logout on one copy is refused on the other", spread[0]
                    )
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            answers = [a for load in loads for a in load.answers]
            report.summary("all requests", answers)
            before_switch = [a for a in answers if a.started < times.get("switch", 1e18)]
            outage(report, "failover", before_switch, times["kill"], times["promoted"])
            if switch_back:
                switched = [a for a in answers if a.started >= times["switch"] - 1]
                outage(report, "switchover", switched, times["switch"], times["switched"])
            pending = sum(load.pending for load in loads)
            report.check(f"no stuck request ({pending} pending)", pending == 0)
            report.check("no 500", not [a for a in answers if a.status == 500])
            excused = copies.unrecorded_by_design()
            ledger = await check_ledger(copies.db.owner_url, answers, excused)
            report.figures["acknowledged"] = ", ".join(
                f"{kind} {count}" for kind, count in sorted(ledger.acknowledged.items())
            )
            report.figures["acknowledged writes missing"] = (
                f"{ledger.lost} (rows {ledger.rows_missing}; "
                + ", ".join(f"{k} {len(v)}" for k, v in sorted(ledger.missing.items()))
                + f"); profile changes logged for reconciliation: {ledger.unrecorded_by_design}"
            )
            if cluster.synchronous:
                report.check("0 acknowledged writes or audited reads missing", ledger.lost == 0)
            chains = await verify_chains(copies.db.owner_url, since)
            report.figures["audit chains"] = (
                f"{chains.scopes} scopes, {chains.events} events, broken: {chains.broken or 0}"
            )
            report.check("every audit chain intact", not chains.broken)
            intact, line = await asyncio.to_thread(
                verify_export, copies.servers[0].url, copies.tokens()[0], copies.env, workdir, since
            )
            report.figures["offline verifier"] = line
            report.check("an auditor's export verifies offline (verify-export)", intact)
    return report


async def _lag(leader: Node) -> str:
    """How far the standbys' disks were behind the leader's WAL (what asynchronous
    replication can lose): bytes not yet flushed by each."""
    url = f"postgresql://postgres@{LOOPBACK}:{leader.pg_port}/postgres"
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT application_name, sync_state,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint AS behind"
            " FROM pg_stat_replication"
        )
    finally:
        await conn.close()
    return ", ".join(
        f"{r['application_name']} ({r['sync_state']}): {r['behind']} bytes" for r in rows
    )


def _new_leader(cluster: PatroniCluster, old: object, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = cluster.leader()
        if leader is not None and leader is not old:
            return time.monotonic()
        time.sleep(0.1)
    raise RuntimeError(f"no new leader within {timeout:g} s:\n{cluster.tail()}")


def _leader_is(cluster: PatroniCluster, node: object, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while cluster.leader() is not node:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the switchover did not complete:\n{cluster.tail()}")
        time.sleep(0.1)
    return time.monotonic()


def asynchronous(cluster: PatroniCluster) -> None:
    """`synchronous_mode: false` through Patroni's own configuration in etcd."""
    node = cluster.nodes[0]
    argv = ["patronictl", "-c", str(node.config), "edit-config", "--force"]
    argv += ["-s", "synchronous_mode=false"]
    if cluster.user is not None:
        argv = ["runuser", "-u", cluster.user, "--", *argv]
    subprocess.run(argv, capture_output=True, timeout=60, check=True)
    cluster.synchronous = False
    deadline = time.monotonic() + 30
    while any(m.get("role") == "sync_standby" for m in cluster.members()):
        if time.monotonic() > deadline:
            raise RuntimeError("the standby stayed synchronous")
        time.sleep(0.2)


RUNS = ("haproxy", "multi-host", "async", "rolling")


def run(names: Sequence[str], seconds: float, admin_url: str) -> list[Report]:
    reports: list[Report] = []
    if "rolling" in names:
        log(f"rolling: three copies behind HAProxy, {seconds:g} s between restarts")
        reports.append(asyncio.run(rolling_restart(admin_url, seconds)))
        print(reports[-1].render(), flush=True)
        for retries in (False, True):
            log(f"rolling: no drain, HAProxy's retries {'on' if retries else 'off'}, for contrast")
            report = asyncio.run(rolling_restart(admin_url, seconds, drain=0, retries=retries))
            reports.append(report)
            print(report.render(), flush=True)
    wanted = [name for name in names if name != "rolling"]
    if not wanted:
        return reports
    log("starting etcd, two Patroni nodes (synchronous_mode: true) and HAProxy")
    with PatroniCluster(2, synchronous=True) as cluster:
        port = free_port()
        nodes = [(n.name, n.pg_port, n.api_port) for n in cluster.nodes]
        with HAProxy(postgres_section(port, nodes), [port]):
            through_haproxy = f"postgresql://postgres@{LOOPBACK}:{port}/postgres"
            straight = f"postgresql://postgres@{cluster.hosts()}/postgres"
            for name in wanted:
                if name == "async":
                    asynchronous(cluster)
                url = straight if name == "multi-host" else through_haproxy
                log(f"{name}: two copies, the leader killed after {seconds:g} s")
                report = asyncio.run(
                    failover_run(name, cluster, url, seconds, switch_back=name != "async")
                )
                reports.append(report)
                print(report.render(), flush=True)
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.failover",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", choices=RUNS, action="append", help="one run (repeatable)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a loopback Postgres where the rolling restart's database may be created",
    )
    args = parser.parse_args(argv)
    reports = run(args.only or RUNS, args.seconds, args.admin_url)
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
