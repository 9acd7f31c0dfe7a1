"""The audit part's per-process object (`AuditRuntime`: the group-commit writer of reads, the
configured keys, the digest issuer), how the lifespan runs it, and its accessor
(`audit_of`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import asyncpg
from databases import Database

from app.audit.anchor import Anchor, StateUnreadable, load_anchor, save_anchor
from app.audit.batcher import AuditWriter
from app.audit.digests import DigestRefused, IssuedDigest, issue_digest
from app.audit.signing import KeyRing, ScopeNames, retired_public_keys
from app.core.db import connection
from app.core.errors import DATABASE_OUTAGES
from app.core.metrics import AUDIT_DIGEST_REFUSALS, AUDIT_DIGESTS_STOPPED
from app.core.settings.audit import AuditSettings
from app.core.settings.values import parse_public_keys
from app.core.state import HasState, part_of
from app.core.tasks import cancelled

logger = logging.getLogger(__name__)


class DigestIssuer:
    """One per process: a digest at start (unless this interval has one) and then at the
    start of every interval. A database that fails is logged and retried at the next
    interval; a digests table that does not continue the last digest this issuer knows
    stops it for good (`state()` is then "stopped"), until an operator has looked."""

    def __init__(
        self,
        database: Database,
        ring: KeyRing,
        names: ScopeNames,
        *,
        interval_seconds: int,
        state_file: Path | None = None,
    ) -> None:
        self.database = database
        self.ring = ring
        self.names = names
        self.interval_seconds = interval_seconds
        self.state_file = state_file
        self.known: Anchor | None = None  # the last digest it signed or saw continue
        self.stopped: str | None = None  # why it stopped
        self._loaded = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            AUDIT_DIGESTS_STOPPED.set(0)
            self._task = asyncio.create_task(self._loop(), name="audit-digests")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancelled(task)

    def state(self) -> Literal["ok", "stopped"]:
        """What `/readyz` shows; it never makes a copy unready (every copy would stop)."""
        return "stopped" if self.stopped is not None else "ok"

    async def run_once(self) -> IssuedDigest | None:
        if self.stopped is not None or not await self._load():
            return None
        try:
            async with connection(self.database) as conn:
                run = await issue_digest(
                    conn,
                    self.ring,
                    self.names,
                    known=self.known,
                    interval_seconds=self.interval_seconds,
                )
        except DigestRefused as exc:
            AUDIT_DIGEST_REFUSALS.inc()
            self._stop(f"refused to sign: {exc}")
            return None
        except DATABASE_OUTAGES as exc:
            logger.warning("audit digest skipped: database unavailable (%s)", type(exc).__name__)
            return None
        except asyncpg.PostgresError as exc:  # e.g. the key is not registered: retried
            logger.error("audit digest not stored: %s", exc)
            return None
        except Exception:
            logger.exception("audit digest failed")
            return None
        if self.known is None and run.found is not None:
            logger.warning(
                "audit digests: this issuer knew no digest yet (%s): it trusted the table's "
                "last, %s",
                f"no state file at {self.state_file}" if self.state_file else "no state file",
                run.found,
            )
        await self._remember(run.last)
        if run.issued is not None:
            logger.info(
                "audit digest issued",
                extra={
                    "number": run.issued.number,
                    "kid": run.issued.kid,
                    "watermark": run.issued.watermark,
                    "heads": run.issued.heads,
                },
            )
        return run.issued

    async def _load(self) -> bool:
        """The state file's anchor, once; False (and stopped) when the file is unreadable."""
        if self._loaded:
            return True
        if self.state_file is not None:
            try:
                self.known = await asyncio.to_thread(load_anchor, self.state_file)
            except StateUnreadable as exc:
                self._stop(f"the state file is unreadable: {exc}")
                return False
        self._loaded = True
        return True

    async def _remember(self, last: Anchor | None) -> None:
        if last is None or last == self.known:
            return
        self.known = last
        if self.state_file is None:
            return
        try:
            await asyncio.to_thread(save_anchor, self.state_file, last)
        except OSError as exc:  # memory still protects this process
            logger.error(
                "audit digests: cannot save the state file %s (%s)",
                self.state_file,
                exc.strerror or type(exc).__name__,
            )

    def _stop(self, reason: str) -> None:
        self.stopped = reason
        AUDIT_DIGESTS_STOPPED.set(1)
        logger.error(
            "audit digests stopped: %s; no digest is signed until an operator has checked "
            'the log and the digests (docs/audit.md, "When the issuer stops")',
            reason,
        )

    async def _loop(self) -> None:
        while self.stopped is None:
            await self.run_once()
            # Just past the next boundary, so the database's clock is in the new interval.
            await asyncio.sleep(self.interval_seconds - time.time() % self.interval_seconds + 0.5)


@dataclass
class AuditRuntime:
    # Records reads: their events, batched with other requests' (app/audit/batcher.py).
    writer: AuditWriter
    keys: KeyRing | None = None  # AUDIT_SIGNING_KEY (and AUDIT_RETIRED_KEYS)
    # The JWKS of GET /.well-known/audit-keys: from the settings alone, never the database.
    published: tuple[dict[str, str], ...] = ()
    names: ScopeNames | None = None  # AUDIT_SCOPE_KEY
    digests: DigestIssuer | None = None  # AUDIT_DIGESTS on
    # AUDIT_WITNESS_KEYS: the witnesses whose cosignatures are accepted, public keys by name.
    witnesses: dict[str, bytes] = field(default_factory=dict)


def audit_runtime(database: Database, settings: AuditSettings) -> AuditRuntime:
    """The runtime the settings describe, not yet started."""
    signing, scope = settings.signing_key, settings.scope_key
    keys = (
        KeyRing.from_setting(signing.get_secret_value(), settings.retired_keys) if signing else None
    )
    runtime = AuditRuntime(
        AuditWriter(database),
        keys,
        published=keys.published if keys else retired_public_keys(settings.retired_keys),
        names=ScopeNames.from_setting(scope.get_secret_value()) if scope else None,
        witnesses=dict(parse_public_keys(settings.witness_keys)) if settings.witness_keys else {},
    )
    if settings.digests and keys is not None and runtime.names is not None:
        runtime.digests = DigestIssuer(
            database,
            keys,
            runtime.names,
            interval_seconds=settings.digest_interval_seconds,
            state_file=settings.signer_state_file,
        )
    return runtime


@contextlib.asynccontextmanager
async def running_audit(database: Database, settings: AuditSettings) -> AsyncIterator[AuditRuntime]:
    """The writer, and the digest issuer when AUDIT_DIGESTS is on; flushed and stopped on exit."""
    runtime = audit_runtime(database, settings)
    if runtime.digests is not None:
        runtime.digests.start()
    try:
        yield runtime
    finally:
        if runtime.digests is not None:
            await runtime.digests.stop()
        await runtime.writer.aclose()


def audit_of(conn: HasState) -> AuditRuntime:
    return part_of(conn, "audit", AuditRuntime)
