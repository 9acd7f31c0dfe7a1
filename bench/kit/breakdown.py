"""Where the service's time went, request by request, from its own access log.

Every access-log line of the service carries `duration_ms` and `phases_ms` (waiting for a
pooled connection, the page query, the audit commit, the Management API, sending: see
app/core/timings.py). Read over a run's lines, they say what the median request and the
slowest 1% spent their time on; what no phase covers (`other`: verifying the token,
building the answer, the handler's own CPU, and any wait for the event loop inside the
request) is the rest. Time spent before the request reached the app (queued in the
kernel or behind other work in the loop) is the client's latency minus the server's; the
event loop's lag, from `/metrics`, says how long such waits were.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.kit.loadgen import percentile

OTHER = "other"


@dataclass(frozen=True)
class Breakdown:
    requests: int
    total: tuple[float, float]  # p50, p99 of the server's own duration, ms
    phases: dict[str, tuple[float, float]]  # p50, p99 per phase, ms (0 where absent)
    tail: dict[str, float] = field(default_factory=dict)  # mean ms per phase, slowest 1%

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "total": self.total,
            "phases": self.phases,
            "tail": self.tail,
        }


def log_offset(path: Path) -> int:
    """Where the log ends now: read from here after a run."""
    return path.stat().st_size if path.exists() else 0


def read_breakdown(path: Path, offset: int, route: str) -> Breakdown | None:
    """The breakdown of the `route` requests logged after `offset`; None when none was."""
    rows: list[tuple[float, dict[str, float]]] = []
    with open(path, "rb") as log:
        log.seek(offset)
        for line in log:
            if b'"phases_ms"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("route") == route and entry.get("status") == 200:
                rows.append((float(entry["duration_ms"]), dict(entry["phases_ms"])))
    if not rows:
        return None
    names = sorted({name for _, phases in rows for name in phases})
    with_other = [
        (total, {**phases, OTHER: max(0.0, total - sum(phases.values()))}) for total, phases in rows
    ]
    stats = {
        name: (
            percentile([p.get(name, 0.0) for _, p in with_other], 50),
            percentile([p.get(name, 0.0) for _, p in with_other], 99),
        )
        for name in [*names, OTHER]
    }
    totals = [total for total, _ in rows]
    slowest = sorted(with_other, key=lambda row: row[0])[-max(1, math.ceil(len(rows) / 100)) :]
    tail = {
        name: sum(p.get(name, 0.0) for _, p in slowest) / len(slowest) for name in [*names, OTHER]
    }
    tail["total"] = sum(total for total, _ in slowest) / len(slowest)
    return Breakdown(len(rows), (percentile(totals, 50), percentile(totals, 99)), stats, tail)


def loop_lag(metrics_text: str) -> dict[str, float]:
    """The event loop's lag samples from a `/metrics` exposition: count, and how many were
    over 5, 10 and 50 ms (cumulative buckets)."""
    buckets: dict[float, float] = {}
    count = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("event_loop_lag_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            value = float(line.rsplit(" ", 1)[1])
            buckets[math.inf if bound == "+Inf" else float(bound)] = value
        elif line.startswith("event_loop_lag_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
    return {
        "samples": count,
        **{f"over_{ms}ms": count - buckets.get(ms / 1000, count) for ms in (5, 10, 50)},
    }
