"""Latency at a fixed request rate (an open load), next to the closed loop's saturation.

wrk keeps every connection busy, so its latency is connections / throughput (Little's
law) and says little about a service below saturation. Here requests are due at a fixed
rate whatever the answers do (`bench.kit.loadgen.Load` with `rate`, as
`python -m bench.studies.soak --rate` sends them), over a fixed number of connections.
Latency is counted from the send (p50, p99) and from when the request was due (p99 due:
it includes waiting for a free connection when all were busy, which a closed loop hides);
`late` counts requests sent more than 10 ms after they were due. The load generator runs
in the harness's process on the same cores (asyncio on uvloop, one raw keep-alive
HTTP/1.1 connection per worker: `bench.kit.loadgen.RawConnection`, 50 to 110 µs of CPU a
request, where httpx's pool costs 1 to 6 ms at 64 connections); its CPU per request is
reported, and a rate it or the server could not keep up with shows as an achieved rate
below the asked one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.kit.loadgen import Answer, Call, Load, percentile

LATE_S = 0.010


@dataclass(frozen=True)
class FixedRateResult:
    asked_rate: float
    connections: int
    seconds: float
    requests: int
    ok: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    p99_due_ms: float
    late: int
    pending: int
    generator_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.requests - self.ok + self.pending

    @property
    def kept_up(self) -> bool:
        """The asked rate was delivered (within 5%): an open-loop figure, not saturation."""
        return self.rate >= 0.95 * self.asked_rate


def summarise(
    answers: Sequence[Answer], asked: float, connections: int, seconds: float, pending: int
) -> FixedRateResult:
    latencies = [a.seconds * 1000 for a in answers]
    due = [a.since_due * 1000 for a in answers]
    ok = sum(1 for a in answers if a.status is not None and 200 <= a.status < 300)
    late = sum(1 for a in answers if a.due is not None and a.started - a.due > LATE_S)
    return FixedRateResult(
        asked,
        connections,
        seconds,
        len(answers),
        ok,
        percentile(latencies, 50),
        percentile(latencies, 99),
        max(latencies, default=0.0),
        percentile(due, 99),
        late,
        pending,
    )


def read_tokens(path: Path) -> list[tuple[str, str]]:
    """(token, scope) pairs from a `token<TAB>scope` file (`bench.harness.data.write_tokens`)."""
    pairs = []
    for line in path.read_text(encoding="ascii").splitlines():
        token, _, scope = line.partition("\t")
        if token:
            pairs.append((token, scope))
    return pairs


def get_calls(
    path: str, tokens: Sequence[tuple[str, str]], *, scope_header: bool = False
) -> Callable[[int], Call]:
    """GET `path` with the tokens in turn; `scope_header` adds `X-Bench-Scope` (the floor)."""
    calls = []
    for token, scope in tokens:
        headers = {"Authorization": f"Bearer {token}"}
        if scope_header:
            headers["X-Bench-Scope"] = scope
        calls.append(Call("read", "GET", path, headers))
    return lambda n: calls[n % len(calls)]


async def _drive(load: Load, seconds: float, grace: float) -> tuple[float, int]:
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(load.run(stop, grace=grace))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return time.monotonic() - started, load.pending


def fixed_rate(
    base_url: str,
    make_call: Callable[[int], Call],
    rate: float,
    connections: int,
    seconds: float,
    *,
    timeout: float = 10.0,
) -> FixedRateResult:
    """`rate` requests per second for `seconds` (at most rate x seconds requests) over
    `connections` keep-alive connections to `base_url` (127.0.0.1 only)."""
    if not base_url.startswith("http://127.0.0.1:"):
        raise ValueError("the load only ever targets 127.0.0.1")
    limit = math.ceil(rate * seconds)
    load = Load(base_url, make_call, concurrency=connections, rate=rate, timeout=timeout,
                limit=limit, raw=True)  # fmt: skip
    cpu = time.process_time()
    try:
        import uvloop  # the servers' loop: the generator's CPU per request is lower

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            elapsed, pending = runner.run(_drive(load, seconds, grace=timeout))
    except ImportError:
        elapsed, pending = asyncio.run(_drive(load, seconds, grace=timeout))
    cpu = time.process_time() - cpu
    # Requests counted over the schedule's span, not the grace for the last answers.
    result = summarise(load.answers, rate, connections, min(elapsed, seconds), pending)
    return dataclasses.replace(result, generator_cpu_s=cpu)
