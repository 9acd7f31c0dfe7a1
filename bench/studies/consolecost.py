"""What a console page of the audit log costs the service: a page of 50 events, newest first.

    python -m bench.studies.consolecost [--events 2000000] [--calls 200]

Provisions a throwaway database (dropped at the end) on the local Postgres, grows a
production-shaped log of `--events` events across many scopes over six months
(`bench.auditlog.grow`, the benchmark's own), and picks the scope with the most events in
the last 31 days and one patient of it. Then, in this process, it runs the console's own
operations and templates (app/console/service.py, app/console/templates/), the way its
handlers do, for

- the audit log page: 50 events of that scope over the last 31 days, newest first;
- the same, filtered to the patient;
- the patient's access report (its first page, up to 200 events, grouped by day),

each one recorded through the process's audit writer as the pages are, and prints the
median and 90th percentile wall time and CPU time of this process per page: the query, the
record and the HTML. What is left out is the same for every page and measured elsewhere:
the cookie's session lookup and token check (`python -m bench`'s read_cookie) and the
request envelope. The issue's target: under 50 ms of service CPU at p50 on 2 million
events. Figures only; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg

from app.audit.events import Actor
from app.audit.query import AuditFilters
from app.audit.runtime import running_audit
from app.console import service
from app.console.edge import templates
from app.core.db import asyncpg_dsn
from app.core.settings import Settings
from app.core.state import running_core
from bench.auditlog.grow import grow
from devkit.db import LOCAL_SERVER_URL, drop, provision

WARM_UP = 20
PAGE = 50

_BUSIEST = """
SELECT scope, count(*) AS n FROM audit_events WHERE recorded_at >= $1
GROUP BY scope ORDER BY n DESC LIMIT 1
"""
_A_PATIENT = """
SELECT e.patient_id FROM audit_events e WHERE e.scope = $1 AND e.patient_id IS NOT NULL
  AND e.recorded_at >= $2 ORDER BY e.recorded_at DESC LIMIT 1
"""


def _settings(app_url: str, owner_url: str) -> Settings:
    return Settings(
        database_url=app_url,
        migrations_database_url=owner_url,
        auth0_domain="consolecost.local",
        auth0_audience="https://consolecost.api",
        auth0_client_id="consolecost-client",
        auth0_client_secret="consolecost-secret",
        app_secret_key="0123456789abcdef0123456789abcdef-test",
        log_level="WARNING",
        _env_file=None,
    )


def _viewer() -> Any:
    """What the pages' layout reads of the signed-in caller."""
    principal = SimpleNamespace(sub="auth0|auditor", org_id=None, permissions=["read:audit_events"])
    return SimpleNamespace(principal=principal, can=lambda permission: True)


def _quantiles(values: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.9)] * 1e3


async def _measure(calls: int, page: Callable[[], Awaitable[str]]) -> tuple[float, ...]:
    wall: list[float] = []
    cpu: list[float] = []
    for round_ in range(calls + WARM_UP):
        started, used = time.perf_counter(), time.process_time()
        await page()
        if round_ >= WARM_UP:
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - used)
    return (*_quantiles(wall), *_quantiles(cpu))


async def main(events: int, calls: int) -> None:
    db = await provision(LOCAL_SERVER_URL)
    try:
        grown = await grow(db.owner_url, events)
        print(grown.text())
        now = datetime.now(UTC)
        since = now - timedelta(days=31)
        owner = await asyncpg.connect(asyncpg_dsn(db.owner_url))
        try:
            busiest = await owner.fetchrow(_BUSIEST, since)
            patient = await owner.fetchval(_A_PATIENT, busiest["scope"], since)
            await owner.execute("ANALYZE")
        finally:
            await owner.close()
        scope = busiest["scope"]
        print(f"the busiest scope has {busiest['n']:,} events in the last 31 days\n")
        settings = _settings(db.app_url, db.owner_url)
        actor = Actor(scope=scope, sub="auth0|auditor", source_ip="203.0.113.9")
        form = {"since": since.strftime("%Y-%m-%dT%H:%M"), "until": now.strftime("%Y-%m-%dT%H:%M")}
        log_page = templates.env.get_template("log.html")
        report_page = templates.env.get_template("report.html")
        async with (
            running_core(settings) as core,
            running_audit(core.database, settings.audit) as audit,
        ):

            def log(filters: AuditFilters) -> Callable[[], Awaitable[str]]:
                async def run() -> str:
                    rows, _ = await service.log_page(
                        core.database, audit.writer, actor, filters, limit=PAGE, after=None
                    )
                    values = {"title": "Audit log", "form": form, "errors": {}, "rows": rows}
                    return log_page.render(values | {"next": "?cursor=x", "viewer": _viewer()})

                return run

            async def report() -> str:
                rows, _ = await service.access_report(
                    core.database, audit.writer, actor, patient, after_seq=0, limit=PAGE * 4
                )
                values = {"title": "Access report", "patient_id": patient, "count": len(rows)}
                values |= {"days": service.by_day(rows), "next": None, "viewer": _viewer()}
                return report_page.render(values)

            cases = {
                "audit log, 50 newest of 31 days": log(AuditFilters(scope, since, now)),
                "audit log, one patient": log(AuditFilters(scope, since, now, patient_id=patient)),
                "access report, first page": report,
            }
            print("| page | wall p50 (ms) | wall p90 (ms) | service CPU p50 (ms) | CPU p90 (ms) |")
            print("|---|---:|---:|---:|---:|")
            for name, run in cases.items():
                w50, w90, c50, c90 = await _measure(calls, run)
                print(f"| {name} | {w50:.2f} | {w90:.2f} | {c50:.2f} | {c90:.2f} |")
    finally:
        await drop(db)


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.consolecost")
    parser.add_argument("--events", type=int, default=2_000_000, help="events in the grown log")
    parser.add_argument("--calls", type=int, default=200, help="measured pages of each kind")
    args = parser.parse_args(argv)
    asyncio.run(main(args.events, args.calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
