"""The event page's proof check, read with the session cookie alone: the caller's scope's
latest signed checkpoint, and one of its events' inclusion proof (RFC 9162), both as JSON
for the page's script (app/console/static/console.js), which verifies them in the browser.
A bad `size` is refused before anything is read or recorded."""

from __future__ import annotations

import base64
import re
import uuid

from starlette.requests import Request
from starlette.responses import Response

from app.audit.runtime import audit_of
from app.audit.trees import ProofUnavailable
from app.console import proofs
from app.console.edge import PAGE_HEADERS, page, viewer
from app.core.errors import BadRequest, NotFound
from app.http.bodies import JSONResponse
from app.http.context import context

AUDIT = "read:audit_events"
_COUNT = re.compile(r"[1-9][0-9]{0,17}")


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _bad(field: str, message: str) -> BadRequest:
    return BadRequest("the query string is invalid", errors=[{"field": field, "message": message}])


def _size(request: Request) -> int | None:
    params = request.query_params
    for name in params:
        if name != "size":
            raise _bad(name, "not a parameter of this request")
    values = params.getlist("size")
    if not values:
        return None
    if len(values) > 1:
        raise _bad("size", "repeated")
    if not _COUNT.fullmatch(values[0]):
        raise _bad("size", "must be a whole number from 1")
    return int(values[0])


@page(AUDIT)
async def checkpoint(request: Request) -> Response:
    """The scope's latest checkpoint: its size, the digest it came with, and the signed note
    as GET /api/audit-events/checkpoint serves it."""
    if request.query_params:
        raise _bad(next(iter(request.query_params)), "not a parameter of this request")
    who = viewer(request)
    found = await proofs.checkpoint(context(request).database, audit_of(request).writer, who.actor)
    if found is None:
        raise NotFound("no checkpoint covers your scope yet")
    body = {
        "size": found.size,
        "digest": found.digest,
        "issued_at": found.issued_at.isoformat(),
        "note": found.note,
    }
    return JSONResponse(body, headers=PAGE_HEADERS)


@page(AUDIT)
async def inclusion(request: Request) -> Response:
    """One event's inclusion proof in the scope's tree of `size` (default: the latest
    checkpoint's), as GET /api/audit-events/{id}/inclusion answers it."""
    size = _size(request)
    event_id: uuid.UUID = request.path_params["event_id"]
    who = viewer(request)
    database, writer = context(request).database, audit_of(request).writer
    try:
        proof = await proofs.inclusion(database, writer, who.actor, event_id, size)
    except ProofUnavailable as exc:
        if exc.field is None:
            raise NotFound(exc.message) from None
        raise _bad(exc.field, exc.message) from None
    if proof is None:
        raise NotFound("no such audit event in your scope")
    body = {
        "event_id": str(event_id),
        "seq": proof.seq,
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "leaf_hash": _b64(proof.leaf_hash),
        "audit_path": [_b64(h) for h in proof.path],
    }
    return JSONResponse(body, headers=PAGE_HEADERS)
