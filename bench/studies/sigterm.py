"""The SIGTERM scenarios of `python -m bench.studies.faults`: a copy told to stop under load.

`sigterm`: SHUTDOWN_DRAIN_SECONDS 0 (the default): requests in flight complete, new
connections are refused at once, exit 0. `sigterm-drain` (and `sigterm-drain-workers`, two
worker processes): with a drain, `/readyz` answers 503 at once, every request that arrives
during the drain is still served, then new connections are refused, in-flight requests
complete, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import time

from bench.kit.faultstack import Report, Stack, mixed_calls, under_load
from bench.kit.loadgen import Load
from bench.kit.loopback import http_call

CONCURRENCY = 16
RATE = 300.0
SLOW_1_5 = b'{"mode": "slow", "seconds": 1.5}'


async def sigterm(stack: Stack, seconds: float) -> Report:
    """SIGTERM while requests are in flight (the tenant is made slow, so GET /api/profile
    requests are in flight for 1.5 s at any moment): they must complete, new connections
    must be refused, and the process must exit 0."""
    report = Report("sigterm")
    proc = stack.service.proc
    assert proc is not None
    load = Load(
        stack.service.url,
        mixed_calls(stack, ("read", "profile", "me"), stack.tokens()),
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

    await under_load(load, steps, grace=10)
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


async def sigterm_drain(stack: Stack, seconds: float, drain: float, workers: int = 1) -> Report:
    """SIGTERM with SHUTDOWN_DRAIN_SECONDS = `drain`, the tenant 1.5 s slow, and `/readyz`
    asked every 0.1 s from the signal on. Profile changes are what is in flight (each waits
    for the tenant; the profile page's shared copy would make copies wait on each other)."""
    report = Report("sigterm-drain" + ("-workers" if workers > 1 else ""))
    proc = stack.service.proc
    assert proc is not None
    load = Load(
        stack.service.url,
        mixed_calls(stack, ("read", "update", "me"), stack.tokens()),
        CONCURRENCY,
        RATE,
    )
    times: dict[str, float] = {}
    codes: list[int | None] = []
    readiness: list[tuple[float, int | None]] = []

    def poll_readiness() -> None:
        while proc.poll() is None:
            try:
                status: int | None = http_call(stack.service.url + "/readyz", timeout=2)[0]
            except OSError:
                status = None
            readiness.append((time.monotonic(), status))
            time.sleep(0.1)

    async def steps() -> None:
        await asyncio.sleep(seconds / 2)
        await asyncio.to_thread(stack.tenant_post, "/dev/fault", SLOW_1_5)
        await asyncio.sleep(seconds / 2)
        times["term"] = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        poller = asyncio.create_task(asyncio.to_thread(poll_readiness))
        codes.append(await asyncio.to_thread(proc.wait, drain + 30))
        times["exited"] = time.monotonic()
        await poller
        await asyncio.sleep(1.0)

    await under_load(load, steps, grace=10)
    term, exited = times["term"], times["exited"]
    # The supervisor passes SIGTERM on to its workers within 0.5 s (its signal loop).
    relay = 0.5 if workers > 1 else 0.0
    during = [a for a in load.answers if term <= a.started < term + drain - 0.2]
    in_flight = [a for a in load.answers if a.started < term < a.started + a.seconds]
    answered = [(t - term, s) for t, s in readiness if s is not None]
    first_503 = next((t for t, s in answered if s == 503), None)
    ready_again = [t for t, s in answered if s == 200 and first_503 is not None and t > first_503]
    late = [a for a in load.answers if a.started >= exited]
    report.summary("in flight at SIGTERM", in_flight)
    report.summary(f"sent during the drain (first {drain - 0.2:g} s)", during)
    report.summary("sent after the exit", late)
    report.figures["/readyz after SIGTERM"] = (
        f"{len(answered)} answers, first 503 after {first_503:.2f} s"
        if first_503 is not None
        else f"{len(answered)} answers, never 503"
    )
    report.figures["SIGTERM to exit"] = f"{exited - term:.2f} s (drain {drain:g} s)"
    report.figures["exit code"] = codes[0] if codes else "did not exit"
    report.check(
        f"/readyz answered 503 within {relay + 0.5:g} s of SIGTERM and never 200 again",
        first_503 is not None and first_503 <= relay + 0.5 and not ready_again,
    )
    report.check(
        f"{len(during)} requests sent during the drain (> 0) all served (2xx)",
        bool(during) and all(a.status is not None and 200 <= a.status < 300 for a in during),
    )
    report.check(
        f"{len(in_flight)} requests in flight at SIGTERM (> 0) all completed",
        bool(in_flight) and all(a.status == 200 for a in in_flight),
    )
    report.check(
        f"it served for the drain before exiting ({exited - term:.1f} s)", exited - term >= drain
    )
    report.check(
        "new connections refused once it exited",
        bool(late) and all(a.error == "ConnectError" for a in late),
    )
    report.check(
        "no 5xx among the answers", not [a for a in load.answers if a.status and a.status >= 500]
    )
    report.check("exit code 0", codes == [0])
    return report
