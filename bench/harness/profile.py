"""Where a request's CPU goes: py-spy on our service while wrk drives the authenticated read.

`python -m bench --profile 20` runs it after the table, on the same database and tokens:
one worker, 64 connections, py-spy sampling the worker (on-CPU samples only, so asyncio's
idle wait is left out). Each function's share of the samples times the worker's measured
CPU per request gives microseconds per request. The raw stacks are kept in the run
directory (`--keep`) as `profile.txt` (py-spy's collapsed format, for flamegraph tools).
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import Counter
from pathlib import Path

from bench.harness import proofs
from bench.harness.model import READ_PATH, Run
from bench.kit.deps import ensure_py_spy
from bench.kit.log import log
from bench.kit.servers import Server, cpu_delta, cpu_times
from bench.kit.wrk import WrkResult, run_wrk

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Inclusive shares worth a line in the report: (label, file suffix, function).
STAGES = (
    ("token verification (TokenVerifier.verify_access_token)", "app/auth/tokens.py",
     "verify_access_token"),
    ("patient page query (list_patients)", "app/patients/search.py", "list_patients"),
    ("audit write, whole (record_events)", "app/audit/record.py", "record_events"),
    ("  hash chain (event_hash)", "app/audit/chain.py", "event_hash"),
    ("  content digest per event (content_digest)", "app/audit/chain.py", "content_digest"),
    ("  canonical detail JSON (canonical_detail)", "app/audit/chain.py", "canonical_detail"),
    ("pool acquire + release (db.connection)", "app/core/db.py", "connection"),
    ("transaction begin/commit (asyncpg transaction)", "asyncpg/transaction.py", "__aexit__"),
    ("rows to JSON shape (patient_json)", "app/patients/schemas.py", "patient_json"),
    ("response rendering (orjson, JSONResponse)", "app/http/bodies.py", "render"),
    ("query-string validation (parse_query)", "app/http/bodies.py", "parse_query"),
    ("access log line (logging)", "logging/__init__.py", "info"),
    (
        "metrics + access log (RequestContextMiddleware._finish)",
        "app/http/middleware.py",
        "_finish",
    ),
    ("request envelope (RequestContextMiddleware)", "app/http/middleware.py", "__call__"),
    ("HTTP parsing + transport (uvicorn httptools)", "uvicorn/protocols/http/httptools_impl.py",
     "data_received"),
    ("DPoP, whole (DPoPVerifier.check)", "app/auth/dpop.py", "check"),
    ("  proof decode + signature (verify_proof)", "app/auth/dpop.py", "verify_proof"),
    ("  replay store (first_use)", "app/auth/replay.py", "first_use"),
    ("  replay store's write (_write)", "app/auth/replay.py", "_write"),
)  # fmt: skip


def parse_collapsed(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """(total samples, self samples by function, inclusive samples by function)."""
    total = 0
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_name(f) for f in stack.split(";") if f]
        if frames:
            leaf[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, leaf, inclusive


def _name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match.group("file")
    for marker in ("site-packages/", "/app/", "/bench/", "python3.11/"):
        if marker in file:
            file = (marker.strip("/") + "/" if marker in ("/app/", "/bench/") else "") + (
                file.split(marker, 1)[1]
            )
            break
    return f"{match.group('func')} ({file})"


def _share(inclusive: Counter[str], file: str, func: str) -> int:
    """Samples of `func` (py-spy may prefix its class: `TokenVerifier.verify_access_token`)."""
    found = 0
    for name, n in inclusive.items():
        qualified, _, where = name.partition(" (")
        if file in where and (qualified == func or qualified.endswith("." + func)):
            found = max(found, n)
    return found


def profile_read(run: Run, server: Server, seconds: float, *, dpop: bool = False) -> list[str]:
    """py-spy on the read (`dpop`: the DPoP read, each request with a fresh proof)."""
    py_spy = ensure_py_spy()
    tokens = run.warm_tokens
    assert tokens is not None
    mode, name = ("dpop_get", "profile-dpop") if dpop else ("get", "profile")
    what = "DPoP read" if dpop else "read"
    log(f"profiling our {what} path for {seconds:g}s (py-spy, 1 worker, 64 connections)")
    server.start()
    url = server.url + READ_PATH
    if dpop:
        tokens = proofs.for_run(run, server.url, 3, "profile-warm", workers=1)
    run_wrk(url, tokens, mode, name + "-warm", connections=64, seconds=3)
    if dpop:
        tokens = proofs.for_run(run, server.url, seconds + 4, "profile-run", workers=1)
    pid = server.serving_pids()[0]
    out: dict[str, WrkResult] = {}

    def drive() -> None:
        out["wrk"] = run_wrk(url, tokens, mode, name, connections=64, seconds=seconds + 4)

    raw = run.run_dir / f"{name}.txt"
    driver = threading.Thread(target=drive)
    driver.start()
    threading.Event().wait(1.5)
    before = cpu_times([pid])
    sampled = subprocess.run(
        [py_spy, "record", "--pid", str(pid), "--duration", str(round(seconds)),
         "--rate", "200", "--format", "raw", "--output", str(raw)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    cpu_s = cpu_delta(before, cpu_times([pid]))
    driver.join()
    server.stop()
    if sampled.returncode != 0 or not raw.exists():
        return ["Profile: py-spy failed: " + (sampled.stderr or sampled.stdout)[-300:]]
    result = out["wrk"]
    # The worker's CPU over py-spy's window, per request at the run's average rate.
    us_per_request = cpu_s / (result.rps * seconds) * 1e6 if result.rps else 0.0
    total, leaf, inclusive = parse_collapsed(raw)
    return render(total, leaf, inclusive, us_per_request, result, dpop=dpop)


def render(
    total: int,
    leaf: Counter[str],
    inclusive: Counter[str],
    us_per_request: float,
    result: WrkResult,
    *,
    dpop: bool = False,
) -> list[str]:
    def cost(n: int) -> str:
        return f"{n / total * 100:5.1f}% | {n / total * us_per_request:6.0f}"

    lines = [
        f"Profile of `GET {READ_PATH}`{' with DPoP' if dpop else ''}, 1 worker, 64 connections: "
        f"{result.rps:,.0f} req/s "
        f"under py-spy, {us_per_request:,.0f} µs of worker CPU per request, {total:,} samples.",
        "",
        "| stage (inclusive) | share | µs/req |",
        "|---|--:|--:|",
    ]
    for label, file, func in STAGES:
        n = _share(inclusive, file, func)
        if n:
            lines.append(f"| {label} | {cost(n)} |")
    lines += ["", "| top functions by own time (self) | share | µs/req |", "|---|--:|--:|"]
    for name, n in leaf.most_common(25):
        lines.append(f"| `{name}` | {cost(n)} |")
    app_frames = [(name, n) for name, n in inclusive.items() if "(app/" in name]
    app_frames.sort(key=lambda item: -item[1])
    lines += ["", "| app functions (inclusive) | share | µs/req |", "|---|--:|--:|"]
    for name, n in app_frames[:25]:
        lines.append(f"| `{name}` | {cost(n)} |")
    return lines
