"""The audit part's per-process object (`AuditRuntime`: the group-commit writer of reads, the
signing keys, the digest issuer), how the lifespan runs it, and its accessor (`audit_of`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from databases import Database

from app.audit.batcher import AuditWriter
from app.audit.digests import DigestIssuer
from app.audit.signing import KeyRing
from app.core.settings.audit import AuditSettings
from app.core.state import HasState, part_of


@dataclass
class AuditRuntime:
    # Records reads: their events, batched with other requests' (app/audit/batcher.py).
    writer: AuditWriter
    keys: KeyRing | None = None  # AUDIT_SIGNING_KEY: the first signs, all are published
    digests: DigestIssuer | None = None  # AUDIT_DIGESTS on


@contextlib.asynccontextmanager
async def running_audit(database: Database, settings: AuditSettings) -> AsyncIterator[AuditRuntime]:
    """The writer, and the digest issuer when AUDIT_DIGESTS is on; flushed and stopped on exit."""
    keys = (
        KeyRing.from_setting(settings.signing_key.get_secret_value())
        if settings.signing_key
        else None
    )
    runtime = AuditRuntime(AuditWriter(database), keys)
    if settings.digests and keys is not None:
        runtime.digests = DigestIssuer(
            database, keys, interval_seconds=settings.digest_interval_seconds
        )
        runtime.digests.start()
    try:
        yield runtime
    finally:
        if runtime.digests is not None:
            await runtime.digests.stop()
        await runtime.writer.aclose()


def audit_of(conn: HasState) -> AuditRuntime:
    return part_of(conn, "audit", AuditRuntime)
