"""The console's pages of the log: the front page, the audit log, one event, a patient's
access report and its downloads."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from app.audit.query import csv_lines, event_item
from app.audit.runtime import audit_of
from app.console import service
from app.console.edge import page, render, viewer
from app.console.search import (
    cursor_payload,
    cursor_position,
    parse_log_query,
)
from app.core.errors import BadRequest
from app.fhir.mapping import AuditEventMapper
from app.http.context import context
from app.http.cursors import open_cursor, sign_cursor

AUDIT = "read:audit_events"
PAGE_SIZE = 50


def _cursor_key(request: Request) -> bytes:
    return context(request).settings.derived_key("console-cursor")


def _open(request: Request, cursor: str) -> dict[str, Any] | None:
    try:
        return open_cursor(_cursor_key(request), cursor)
    except BadRequest:
        return None


@page()
async def home(request: Request) -> Response:
    """The console's front page: the pages this caller may open."""
    return render(request, "home.html", {"title": "Console", "audit": viewer(request).can(AUDIT)})


@page(AUDIT)
async def audit_log(request: Request) -> Response:
    who = viewer(request)
    query = parse_log_query(request.query_params, who.actor.scope, datetime.now(UTC))
    after = None
    if query.filters is not None and query.cursor is not None:
        payload = _open(request, query.cursor)
        after = cursor_position(query.filters, payload) if payload is not None else None
        if after is None:
            query.errors["cursor"] = "not a cursor for these filters: start again"
    context_: dict[str, Any] = {"title": "Audit log", "form": query.form, "errors": query.errors}
    if query.errors or query.filters is None:
        return render(request, "log.html", context_ | {"rows": [], "next": None}, status=400)
    rows, next_key = await service.log_page(
        context(request).database,
        audit_of(request).writer,
        who.actor,
        query.filters,
        limit=PAGE_SIZE,
        after=after,
    )
    next_url = None
    if next_key is not None:
        cursor = sign_cursor(_cursor_key(request), cursor_payload(query.filters, next_key))
        shown = {name: value for name, value in query.form.items() if value}
        next_url = "/console/audit?" + urlencode(shown | {"cursor": cursor})
    return render(request, "log.html", context_ | {"rows": rows, "next": next_url})


@page(AUDIT)
async def audit_event(request: Request) -> Response:
    who = viewer(request)
    seq: int = request.path_params["seq"]
    row, place = await service.one_event(
        context(request).database, audit_of(request).writer, who.actor, seq
    )
    if row is None:
        return render(request, "missing.html", {"title": "No such event"}, status=404)
    item = event_item(row)
    detail = orjson.dumps(orjson.loads(row["detail"]), option=orjson.OPT_INDENT_2).decode()
    audit = context(request).settings.audit
    interval = audit.digest_interval_seconds if audit.digests else None
    values = {"title": f"Event {seq}", "row": row, "item": item, "detail": detail, "place": place}
    return render(request, "event.html", values | {"interval": interval})


@page(AUDIT)
async def access_report(request: Request) -> Response:
    who = viewer(request)
    patient_id: uuid.UUID = request.path_params["patient_id"]
    after = 0
    cursor = request.query_params.get("cursor")
    if cursor is not None:
        payload = _open(request, cursor)
        good = payload is not None and payload.get("k") == "report"
        good = good and payload is not None and payload.get("p") == str(patient_id)
        good = good and payload is not None and payload.get("s") == who.actor.scope
        if not good or payload is None or not isinstance(payload.get("q"), int):
            values = {"title": "Access report", "patient_id": patient_id, "days": [], "next": None}
            values["error"] = "not a cursor for this report: start again"
            return render(request, "report.html", values, status=400)
        after = payload["q"]
    rows, next_seq, archived = await service.access_report(
        context(request).database,
        audit_of(request).writer,
        who.actor,
        patient_id,
        after_seq=after,
        limit=PAGE_SIZE * 4,
    )
    next_url = None
    if next_seq is not None:
        payload = {"k": "report", "p": str(patient_id), "s": who.actor.scope, "q": next_seq}
        next_url = f"?cursor={sign_cursor(_cursor_key(request), payload)}"
    values = {
        "title": "Access report",
        "patient_id": patient_id,
        "days": service.by_day(rows),
        "count": len(rows),
        "next": next_url,
        "archived": archived,
    }
    return render(request, "report.html", values)


@page(AUDIT)
async def access_report_csv(request: Request) -> Response:
    who = viewer(request)
    patient_id: uuid.UUID = request.path_params["patient_id"]
    chunks = await service.report_download(
        context(request).database,
        audit_of(request).writer,
        who.actor,
        patient_id,
        "console.access_report.csv",
        csv_lines,
        header=csv_lines((), header=True),
    )
    name = f"access-report-{patient_id}.csv"
    return StreamingResponse(
        chunks,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@page(AUDIT)
async def access_report_fhir(request: Request) -> Response:
    """The report as a FHIR `Bundle` (collection) of BALP `AuditEvent`s about the patient."""
    who = viewer(request)
    patient_id: uuid.UUID = request.path_params["patient_id"]
    settings = context(request).settings
    mapper = AuditEventMapper(settings.auth0.issuer, settings.auth0.audience)
    base = settings.server.public_url.rstrip("/") + "/fhir" if settings.server.public_url else ""
    first = True

    def encode(rows: Any) -> bytes:
        nonlocal first
        parts = []
        for row in rows:
            for resource in mapper.resources(row, patient_id):
                entry = {"fullUrl": f"{base}/AuditEvent/{resource['id']}", "resource": resource}
                parts.append(("" if first else ",").encode() + orjson.dumps(entry))
                first = False
        return b"".join(parts)

    chunks = await service.report_download(
        context(request).database,
        audit_of(request).writer,
        who.actor,
        patient_id,
        "console.access_report.fhir",
        encode,
        header=b'{"resourceType":"Bundle","type":"collection","entry":[',
    )

    async def body() -> Any:
        async for chunk in chunks:
            yield chunk
        yield b"]}"

    name = f"access-report-{patient_id}.fhir.json"
    return StreamingResponse(
        body(),
        media_type="application/fhir+json",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


async def root(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=308)
