"""A long steady run, for leaks and drift.

    python -m bench.studies.soak [--minutes 10] [--rate 150]

A steady mix (patient reads, patient creations, `/api/me`, `/api/profile`) at a fixed rate
against the service as production runs it (`bench.kit.faultstack`). It passes when no
request failed (every answer 2xx, none stuck), the service's resident memory grew less than
10% from the end of the first minute (the warm-up) to the end, and the database holds
exactly one patient row and one `patient.created` event per 201, no more, no fewer.

`--connections 64 --mix read,read,read,post --rate 300` measures latency at a fixed rate
(an open load, unlike wrk's closed loop in `python -m bench`); `--client raw` sends it
with one raw keep-alive connection per worker (`bench.kit.loadgen.RawConnection`) instead
of httpx's pool, which costs the generator 1 to 6 ms of CPU a request at 64 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from bench.kit.faultstack import Report, Stack, count_stored, log, make_call, running_stack
from bench.kit.loadgen import Call, Load
from devkit.db import LOCAL_SERVER_URL

MIX = ("read", "post", "me", "read", "profile")
SAMPLE_SECONDS = 5.0
MAX_GROWTH = 0.10


async def soak(
    stack: Stack,
    seconds: float,
    rate: float,
    warmup: float = 60.0,
    *,
    connections: int = 16,
    mix: Sequence[str] = MIX,
    raw: bool = False,
) -> Report:
    report = Report("soak")
    tokens = stack.tokens()

    def call(n: int) -> Call:
        return make_call(mix[n % len(mix)], tokens[n % len(tokens)], f"{stack.run_id}-{n}")

    load = Load(stack.service.url, call, concurrency=connections, rate=rate, raw=raw)
    assert stack.service.proc is not None
    process = psutil.Process(stack.service.proc.pid)
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(load.run(stop))
    while (elapsed := time.monotonic() - started) < seconds:
        samples.append((elapsed, process.memory_info().rss))
        if len(samples) % 12 == 0:
            failed = sum(1 for a in load.answers if not (a.status and 200 <= a.status < 300))
            log(
                f"  {elapsed / 60:4.1f} min: {len(load.answers)} answers, {failed} failed, "
                f"RSS {samples[-1][1] / 2**20:.1f} MiB"
            )
        await asyncio.sleep(SAMPLE_SECONDS)
    stop.set()
    await task
    samples.append((time.monotonic() - started, process.memory_info().rss))

    answers = load.answers
    found = report.summary("all requests", answers)
    for kind in sorted(set(mix)):
        report.summary(f"  {kind}", [a for a in answers if a.name == kind])
    report.figures["achieved rate"] = f"{len(answers) / seconds:.0f} req/s over {seconds:.0f} s"
    after = [rss for t, rss in samples if t >= warmup] or [samples[-1][1]]
    base, end = statistics.mean(after[:3]), statistics.mean(after[-3:])
    growth = (end - base) / base
    report.figures["RSS (MiB)"] = (
        f"start {samples[0][1] / 2**20:.1f}, after warm-up {base / 2**20:.1f}, "
        f"end {end / 2**20:.1f}, max {max(after) / 2**20:.1f} ({len(samples)} samples)"
    )
    report.figures["RSS growth after warm-up"] = f"{growth:+.1%}"
    stored = await count_stored(stack.db.owner_url, answers)
    report.figures["201s / rows / events"] = (
        f"{stored.created} / {stored.all_rows} / {stored.all_events}"
    )
    report.figures["still pending at the end"] = load.pending
    report.check(
        f"zero errors ({found.requests - found.ok} of {found.requests} not 2xx)",
        found.ok == found.requests > 0,
    )
    report.check("no stuck request", load.pending == 0)
    report.check(f"RSS growth after the warm-up under {MAX_GROWTH:.0%}", growth < MAX_GROWTH)
    report.check(
        "rows and patient.created events equal the 201s",
        stored.lost == 0 and stored.created == stored.all_rows == stored.all_events,
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS counts")
    parser.add_argument("--connections", type=int, default=16, help="concurrent clients")
    parser.add_argument(
        "--mix",
        default=",".join(MIX),
        help="the request kinds, cycled in this order (read, post, me, profile)",
    )
    parser.add_argument(
        "--client",
        choices=("httpx", "raw"),
        default="httpx",
        help="the load's HTTP client: httpx (one pool) or raw (a connection per worker)",
    )
    parser.add_argument("--admin-url", default=LOCAL_SERVER_URL)
    args = parser.parse_args(argv)
    mix = tuple(kind.strip() for kind in args.mix.split(",") if kind.strip())
    if not mix or not set(mix) <= {"read", "post", "me", "profile"}:
        parser.error("--mix takes read, post, me and profile, comma-separated")
    log(
        f"soak: {args.minutes:g} min at {args.rate:g} req/s, {args.connections} connections, "
        f"mix {','.join(mix)}"
    )
    with (
        tempfile.TemporaryDirectory(prefix="bff-soak-") as directory,
        running_stack(args.admin_url, Path(directory)) as stack,
    ):
        report = asyncio.run(
            soak(
                stack,
                args.minutes * 60,
                args.rate,
                args.warmup,
                connections=args.connections,
                mix=mix,
                raw=args.client == "raw",
            )
        )
    print(report.render(), flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
