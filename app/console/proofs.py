"""The console's proof reads: the caller's scope's latest signed checkpoint, and the
inclusion proof of one of its events, for the event page's in-browser check. Each is read
with the audit part's own operations (app/audit/trees.py) and recorded as an `audit.read`
(as the API's proof endpoints record theirs) before it is returned."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from databases import Database

from app.audit.batcher import AuditWriter
from app.audit.events import Actor, Event
from app.audit.trees import InclusionProof, inclusion_proof, latest_checkpoint, served_checkpoint
from app.core.db import connection, transaction


@dataclass(frozen=True, slots=True)
class ServedCheckpoint:
    size: int
    digest: int  # the number of the digest it was issued with
    issued_at: datetime
    note: str  # as GET /api/audit-events/checkpoint serves it (cosignatures included)


def _read(view: str, **detail: object) -> Event:
    return Event("audit.read", "R", detail={"view": view, **detail})


async def checkpoint(
    database: Database, writer: AuditWriter, actor: Actor
) -> ServedCheckpoint | None:
    """The latest checkpoint of the caller's scope (None: it has none yet, nothing recorded)."""
    async with connection(database) as conn, conn.transaction(isolation="repeatable_read"):
        latest = await latest_checkpoint(conn, actor.scope)  # one snapshot: the same one
        served = await served_checkpoint(conn, actor.scope)
    if latest is None or served is None:
        return None
    found = ServedCheckpoint(served[0], latest["digest_number"], latest["issued_at"], served[1])
    await writer.record(actor, [_read("console.checkpoint", size=found.size)])
    return found


async def inclusion(
    database: Database, writer: AuditWriter, actor: Actor, event_id: uuid.UUID, size: int | None
) -> InclusionProof | None:
    """The inclusion proof of the caller's scope's event `event_id` in its tree of `size`
    (None: the latest checkpoint's); None when the scope has no such event;
    `ProofUnavailable` (app/audit/trees.py) when the event or `size` is past the checkpoints."""
    async with transaction(database) as conn:
        proof = await inclusion_proof(conn, actor.scope, event_id, size)
    if proof is not None:
        detail = {"event_id": str(event_id), "size": proof.tree_size}
        await writer.record(actor, [_read("console.inclusion", **detail)])
    return proof
