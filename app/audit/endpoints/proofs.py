"""HTTP handlers: the caller's scope's Merkle tree, its signed checkpoint and its proofs.

`GET /api/audit-events/checkpoint` serves the latest signed checkpoint of the caller's
scope (a C2SP signed note, text/plain); `GET /api/audit-events/{id}/inclusion?size=N` the
RFC 9162 inclusion proof of one of its events, `GET /api/audit-events/consistency?from=M&
to=N` the consistency proof between two of its tree sizes. Each proof is computed from
the stored nodes of the caller's scope's tree alone (app/audit/trees.py), so it holds
hashes of that scope's events and nothing of any other scope's. Every answer is recorded
as an `audit.read`; a bad parameter is refused before anything is read or recorded.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.audit.checkpoints import CheckpointInvalid, verify_cosignature
from app.audit.edge import actor_from
from app.audit.events import Event
from app.audit.record import record_event
from app.audit.runtime import audit_of
from app.audit.trees import (
    ProofUnavailable,
    checkpoint_at,
    consistency_proof,
    inclusion_proof,
    served_checkpoint,
    store_cosignature,
)
from app.auth.requires import principal, requires
from app.core.db import transaction
from app.core.errors import BadRequest, NotFound
from app.http.bodies import JSONResponse, parse_body
from app.http.context import context
from app.http.openapi import Problem, Resp, operation

TAGS = ["audit"]
_COUNT = re.compile(r"[1-9][0-9]{0,17}")
NOTE_TYPE = "text/plain; charset=utf-8"


class InclusionQuery(BaseModel):
    size: int | None = Field(
        None, ge=1, description="The tree size (default: the latest checkpoint's)"
    )


class ConsistencyQuery(BaseModel):
    from_: int = Field(ge=1, alias="from", description="The older tree size")
    to: int = Field(ge=1, description="The newer tree size, at most the latest checkpoint's")


class CosignatureIn(BaseModel):
    size: int = Field(ge=1, description="The size of the checkpoint cosigned")
    cosignature: str = Field(
        max_length=512, description="The witness's line: `— NAME BASE64` (C2SP cosignature/v1)"
    )


class CosignatureOut(BaseModel):
    witness: str
    size: int
    state: str = Field(description="`stored`, or `already stored`")


class InclusionOut(BaseModel):
    event_id: uuid.UUID
    seq: int
    leaf_index: int = Field(description="The event's place in its scope's tree, from 0")
    tree_size: int
    leaf_hash: str = Field(description="Base64 SHA-256(0x00 || the event's hash)")
    audit_path: list[str] = Field(description="Base64 hashes, leaf side first (RFC 9162)")


class ConsistencyOut(BaseModel):
    from_: int = Field(alias="from")
    to: int
    proof: list[str] = Field(description="Base64 hashes (RFC 9162 2.1.4)")


def _bad(field: str, message: str) -> BadRequest:
    return BadRequest("the query string is invalid", errors=[{"field": field, "message": message}])


def _counts(
    request: Request, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, int]:
    """The query's positive integers; anything else is a 400 naming the parameter."""
    params = request.query_params
    for name in params:
        if name not in (*required, *optional):
            raise _bad(name, "not a parameter of this request")
        if len(params.getlist(name)) > 1:
            raise _bad(name, "repeated")
    values: dict[str, int] = {}
    for name in (*required, *optional):
        text = params.get(name)
        if text is None:
            if name in required:
                raise _bad(name, "required")
            continue
        if not _COUNT.fullmatch(text):
            raise _bad(name, "must be a whole number from 1")
        values[name] = int(text)
    return values


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _read(view: str, **detail: Any) -> Event:
    return Event("audit.read", "R", detail={"view": view, **detail})


@operation(
    "The latest signed checkpoint of the caller's scope's Merkle tree",
    tags=TAGS,
    responses={
        200: Resp(
            None,
            "A C2SP signed note: origin, tree size, base64 root hash, then the signatures",
            media_type="text/plain",
        ),
        404: Resp(
            Problem,
            "No checkpoint covers your scope yet (the next digest brings one)",
            media_type="application/problem+json",
        ),
    },
    description="Signed with the digest key (GET /.well-known/audit-keys); issued with the "
    "digests, so it covers the scope's events up to one digest interval old. 404 until the "
    "scope has one. The read is recorded as `audit.read`.",
)
@requires("read:audit_events")
async def get_checkpoint(request: Request) -> Response:
    _counts(request, ())
    actor = actor_from(request, principal(request))
    async with transaction(context(request).database) as conn:
        served = await served_checkpoint(conn, actor.scope)
        if served is None:
            raise NotFound("no checkpoint covers this scope yet")
        await record_event(conn, actor, _read("checkpoint", size=served[0]))
    return Response(served[1], media_type=NOTE_TYPE)


@operation(
    "The proof that one event of the caller's scope is in its tree (RFC 9162)",
    tags=TAGS,
    query=InclusionQuery,
    responses={200: InclusionOut},
    description="Check it offline with `python -m app audit verify-inclusion` and the "
    "checkpoint of that size (docs/audit.md). The read is recorded as `audit.read`.",
)
@requires("read:audit_events")
async def get_inclusion(request: Request) -> Response:
    size = _counts(request, (), ("size",)).get("size")
    event_id: uuid.UUID = request.path_params["event_id"]
    actor = actor_from(request, principal(request))
    async with transaction(context(request).database) as conn:
        try:
            proof = await inclusion_proof(conn, actor.scope, event_id, size)
        except ProofUnavailable as exc:
            if exc.field is None:
                raise NotFound(exc.message) from None
            raise _bad(exc.field, exc.message) from None
        if proof is None:
            raise NotFound("no such audit event in your scope")
        detail = {"event_id": str(event_id), "size": proof.tree_size}
        await record_event(conn, actor, _read("inclusion", **detail))
    return JSONResponse(
        {
            "event_id": str(event_id),
            "seq": proof.seq,
            "leaf_index": proof.leaf_index,
            "tree_size": proof.tree_size,
            "leaf_hash": _b64(proof.leaf_hash),
            "audit_path": [_b64(h) for h in proof.path],
        }
    )


@operation(
    "The proof that the caller's scope's tree of `to` events extends its tree of `from`",
    tags=TAGS,
    query=ConsistencyQuery,
    responses={200: ConsistencyOut},
    description="Check it offline with `python -m app audit verify-consistency` and the two "
    "checkpoints (docs/audit.md). The read is recorded as `audit.read`.",
)
@requires("read:audit_events")
async def get_consistency(request: Request) -> Response:
    sizes = _counts(request, ("from", "to"))
    old, new = sizes["from"], sizes["to"]
    if old > new:
        raise _bad("from", "must be at most `to`")
    actor = actor_from(request, principal(request))
    async with transaction(context(request).database) as conn:
        try:
            proof = await consistency_proof(conn, actor.scope, old, new)
        except ProofUnavailable as exc:
            raise _bad(exc.field or "to", exc.message) from None
        await record_event(conn, actor, _read("consistency", **{"from": old, "to": new}))
    return JSONResponse({"from": old, "to": new, "proof": [_b64(h) for h in proof]})


@operation(
    "A witness's cosignature of one of the caller's scope's checkpoints",
    tags=TAGS,
    body=CosignatureIn,
    responses={200: CosignatureOut},
    description="Accepted only from a witness in AUDIT_WITNESS_KEYS, and only when it holds "
    "for the stored checkpoint of that size; then served with it. Recorded as "
    '`audit.cosigned` (docs/audit.md, "Running a witness").',
)
@requires("read:audit_events")
async def post_cosignature(request: Request) -> Response:
    body = await parse_body(request, CosignatureIn)
    witnesses = audit_of(request).witnesses
    actor = actor_from(request, principal(request))
    async with transaction(context(request).database) as conn:
        note = await checkpoint_at(conn, actor.scope, body.size)
        if note is None:
            raise _invalid_body("size", "no checkpoint of this size in your scope")
        text = note.partition("\n\n")[0] + "\n"
        try:
            witness = verify_cosignature(body.cosignature, text, witnesses)
        except CheckpointInvalid as exc:
            raise _invalid_body("cosignature", str(exc)) from None
        state = await store_cosignature(conn, actor.scope, body.size, witness, body.cosignature)
        event = Event("audit.cosigned", "C", detail={"witness": witness, "size": body.size})
        await record_event(conn, actor, event)
    return JSONResponse({"witness": witness, "size": body.size, "state": state})


def _invalid_body(field: str, message: str) -> BadRequest:
    return BadRequest("the cosignature is refused", errors=[{"field": field, "message": message}])


routes: list[BaseRoute] = [
    Route("/api/audit-events/checkpoint/cosignatures", post_cosignature, methods=["POST"]),
    Route("/api/audit-events/checkpoint", get_checkpoint, methods=["GET"]),
    Route("/api/audit-events/consistency", get_consistency, methods=["GET"]),
    Route("/api/audit-events/{event_id:uuid}/inclusion", get_inclusion, methods=["GET"]),
]
