"""The rolling restart of `python -m bench.failover`: three copies of the service behind
HAProxy (health check `GET /readyz`), each sent SIGTERM and started again in turn while a
steady mixed load goes through HAProxy. With SHUTDOWN_DRAIN_SECONDS longer than HAProxy
takes to see a copy go down (one failed check, 0.5 s apart), no request may fail, even with
HAProxy's retries off. Without a drain (`drain=0`, the service's default) the contrast runs
show what a balancer that does not retry (kube-proxy) passes on, and that HAProxy's own
retries of refused connections (`retries=True`) hide those refusals."""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
from pathlib import Path

from bench.kit.auditcheck import verify_chains
from bench.kit.copies import check_ledger, running_copies
from bench.kit.faultstack import Report
from bench.kit.haproxy import HAProxy, free_port, service_section
from bench.kit.loadgen import Load
from bench.kit.loopback import LOOPBACK, http_call

KINDS = ("read", "post", "update", "read")
CONCURRENCY = 12
RATE = 150.0
DRAIN = 2.0  # four of HAProxy's health checks


def _routed(url: str, timeout: float = 30) -> None:
    """Wait until the copy answers /readyz, then for HAProxy's two checks to pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_call(url + "/readyz", timeout=1)[0] == 200:
                time.sleep(1.5)
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {timeout:g} s")


async def rolling_restart(
    admin_url: str, seconds: float, drain: float = DRAIN, *, retries: bool = False
) -> Report:
    """`retries`: HAProxy resends a request that could not reach a copy to another one
    (off by default, so that the drain alone is what is measured)."""
    name = "rolling-restart" + ("" if drain else "-without-drain")
    report = Report(name + ("-haproxy-retries" if retries else ""))
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    env = {"SHUTDOWN_DRAIN_SECONDS": f"{drain:g}"}
    with (
        tempfile.TemporaryDirectory(prefix="bff-rolling-") as directory,
        running_copies(admin_url, Path(directory), 3, env) as copies,
    ):
        port = free_port()
        section = service_section(port, [(s.name, s.port) for s in copies.servers], retries=retries)
        with HAProxy(section, [port]):
            await asyncio.to_thread(_routed, copies.servers[-1].url)
            load = Load(f"http://{LOOPBACK}:{port}", copies.calls(0, KINDS), CONCURRENCY, RATE)
            stop = asyncio.Event()
            task = asyncio.create_task(load.run(stop, 30))
            restarts: list[float] = []
            try:
                await asyncio.sleep(seconds / 2)
                for server in copies.servers:
                    started = time.monotonic()
                    await asyncio.to_thread(server.stop)  # SIGTERM; it drains, then exits
                    await asyncio.to_thread(server.start)
                    await asyncio.to_thread(_routed, server.url)
                    restarts.append(time.monotonic() - started)
                    await asyncio.sleep(seconds / 2)
            finally:
                stop.set()
                await task
        answers = load.answers
        found = report.summary("through HAProxy", answers)
        report.figures["restarts (SIGTERM to back in rotation)"] = ", ".join(
            f"{s:.1f} s" for s in restarts
        )
        report.figures["drain"] = f"SHUTDOWN_DRAIN_SECONDS={drain:g}" + (
            ", HAProxy resends what could not reach a copy" if retries else ", HAProxy: retries 0"
        )
        failed = found.requests - found.ok
        ledger = await check_ledger(copies.db.owner_url, answers, copies.unrecorded_by_design())
        report.figures["acknowledged writes missing"] = ledger.lost
        chains = await verify_chains(copies.db.owner_url, since)
        report.figures["audit chains"] = f"{chains.scopes} scopes, broken: {chains.broken or 0}"
        if drain:
            report.check(f"0 failed requests ({failed})", failed == 0 and bool(answers))
            report.check(f"3 copies restarted ({len(restarts)})", len(restarts) == 3)
            report.check(f"no stuck request ({load.pending})", load.pending == 0)
            report.check("0 acknowledged writes missing", ledger.lost == 0)
            report.check("every audit chain intact", not chains.broken)
        else:
            report.figures["failed requests"] = failed
            report.check("3 copies restarted", len(restarts) == 3)
    return report
