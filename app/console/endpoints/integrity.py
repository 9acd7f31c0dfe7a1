"""The console's integrity and activity pages: the chain verified over a window, the latest
signed digests, the auditor's offline steps and their export, and the charts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from app.audit.query import export_events, ndjson_lines
from app.audit.runtime import audit_of
from app.console import charts, service
from app.console.edge import page, render, viewer
from app.console.search import parse_window
from app.http.context import context

AUDIT = "read:audit_events"


@page(AUDIT)
async def integrity(request: Request) -> Response:
    """The chain of the caller's scope verified over a window, the latest signed digests,
    and the auditor's offline steps."""
    who = viewer(request)
    query = parse_window(request.query_params, who.actor.scope, datetime.now(UTC))
    values: dict[str, Any] = {"title": "Integrity", "form": query.form, "errors": query.errors}
    if query.filters is None:
        return render(request, "integrity.html", values | {"report": None}, status=400)
    report, digests, checkpoints = await service.integrity(
        context(request).database,
        audit_of(request).writer,
        who.actor,
        query.filters.since,
        query.filters.until,
    )
    values |= {"report": report, "digests": digests, "checkpoints": checkpoints}
    return render(request, "integrity.html", values)


@page(AUDIT)
async def integrity_export(request: Request) -> Response:
    """The window's events as NDJSON, for `python -m app audit verify-export`."""
    who = viewer(request)
    query = parse_window(request.query_params, who.actor.scope, datetime.now(UTC))
    if query.filters is None:
        values = {"title": "Integrity", "form": query.form, "errors": query.errors}
        return render(request, "integrity.html", values | {"report": None}, status=400)
    database = context(request).database
    await service.record_export(audit_of(request).writer, who.actor, query.filters)
    return StreamingResponse(
        export_events(database, query.filters, ndjson_lines),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="events.ndjson"'},
    )


@page(AUDIT)
async def integrity_digests(request: Request) -> Response:
    """Every signed digest, one a line: the offline check's `--digests` file."""
    who = viewer(request)
    lines = await service.digests_download(
        context(request).database, audit_of(request).writer, who.actor, audit_of(request).names
    )
    return StreamingResponse(
        lines,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="digests.ndjson"'},
    )


@page(AUDIT)
async def activity(request: Request) -> Response:
    """Charts of the window: events per hour by action family, denied per hour, top actors,
    each with its numbers in a table."""
    who = viewer(request)
    query = parse_window(request.query_params, who.actor.scope, datetime.now(UTC))
    values: dict[str, Any] = {"title": "Activity", "form": query.form, "errors": query.errors}
    if query.filters is None:
        return render(request, "activity.html", values | {"seen": None}, status=400)
    seen = await service.activity(
        context(request).database,
        audit_of(request).writer,
        who.actor,
        query.filters.since,
        query.filters.until,
    )
    labels = [hour.strftime("%Y-%m-%d %H:00") for hour in seen.hours]
    families = list(seen.by_family)
    drawn = {
        "events": charts.stacked_bars(
            "c-events", "Events per hour, stacked by action family", labels, seen.by_family
        ),
        "denied": charts.stacked_bars(
            "c-denied", "Denied requests per hour", labels, {"denied": seen.denied}
        ),
        "actors": charts.horizontal_bars(
            "c-actors",
            "Top actors by disclosing events",
            [(name, events) for name, events, _ in seen.actors],
        ),
    }
    legend = [(family, charts.colour(i)) for i, family in enumerate(families)]
    rows = [
        (label, [seen.by_family[f][i] for f in families], seen.denied[i])
        for i, label in enumerate(labels)
    ]
    values |= {"seen": seen, "drawn": drawn, "legend": legend, "families": families}
    return render(request, "activity.html", values | {"rows": rows})
