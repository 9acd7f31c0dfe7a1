"""HTTP handlers of the console (docs/console.md): the log's pages (`log`), and integrity and
activity (`integrity`). Each reads the caller's scope only and records its own view before it
answers (app/console/service.py)."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from app.console.endpoints.admin import (
    end_member_session,
    grant_roles,
    member_list,
    member_page,
    revoke_roles,
)
from app.console.endpoints.integrity import (
    activity,
    integrity,
    integrity_digests,
    integrity_export,
)
from app.console.endpoints.log import (
    access_report,
    access_report_csv,
    access_report_fhir,
    audit_event,
    audit_log,
    home,
    root,
)
from app.console.endpoints.proofs import checkpoint, inclusion

STATIC = Path(__file__).parent.parent / "static"

routes: list[BaseRoute] = [
    Route("/console", root, methods=["GET"], include_in_schema=False),
    Route("/console/", home, methods=["GET"], include_in_schema=False),
    Route("/console/audit", audit_log, methods=["GET"], include_in_schema=False),
    Route("/console/audit/events/{seq:int}", audit_event, methods=["GET"], include_in_schema=False),
    Route("/console/audit/checkpoint", checkpoint, methods=["GET"], include_in_schema=False),
    Route(
        "/console/audit/events/{event_id:uuid}/inclusion",
        inclusion,
        methods=["GET"],
        include_in_schema=False,
    ),
    Route(
        "/console/patients/{patient_id:uuid}/access",
        access_report,
        methods=["GET"],
        include_in_schema=False,
    ),
    Route(
        "/console/patients/{patient_id:uuid}/access.csv",
        access_report_csv,
        methods=["GET"],
        include_in_schema=False,
    ),
    Route(
        "/console/patients/{patient_id:uuid}/access.fhir.json",
        access_report_fhir,
        methods=["GET"],
        include_in_schema=False,
    ),
    Route("/console/integrity", integrity, methods=["GET"], include_in_schema=False),
    Route(
        "/console/integrity/events.ndjson",
        integrity_export,
        methods=["GET"],
        include_in_schema=False,
    ),
    Route(
        "/console/integrity/digests.ndjson",
        integrity_digests,
        methods=["GET"],
        include_in_schema=False,
    ),
    Route("/console/activity", activity, methods=["GET"], include_in_schema=False),
    Route("/console/members", member_list, methods=["GET"], include_in_schema=False),
    Route("/console/members/{user_id}", member_page, methods=["GET"], include_in_schema=False),
    Route(
        "/console/members/{user_id}/roles/grant",
        grant_roles,
        methods=["POST"],
        include_in_schema=False,
    ),
    Route(
        "/console/members/{user_id}/roles/revoke",
        revoke_roles,
        methods=["POST"],
        include_in_schema=False,
    ),
    Route(
        "/console/members/{user_id}/sessions/{session_id:uuid}/end",
        end_member_session,
        methods=["POST"],
        include_in_schema=False,
    ),
    Mount("/console/static", StaticFiles(directory=STATIC), name="console-static"),
]
