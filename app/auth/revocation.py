"""Revoked tokens and sessions: stored in Postgres, checked in memory, spread by NOTIFY.

`POST /api/logout` revokes the caller's token (by `jti`, else by a digest of its claims) and
its session (`sid`). A revocation is a row in `revocations` and, in the same transaction, a
`NOTIFY` on one channel. Every copy of the service keeps one dedicated connection that
LISTENs on that channel and holds the set of live revocations in memory, so the verifier's
`is_revoked` check costs a dict lookup and no database round trip.

Nothing is missed: the listener LISTENs before it (re)loads the table, so a revocation that
commits while it loads arrives either in the load or as a notification. A dropped or silent
connection (checked every `keepalive_seconds`) is replaced, and the table is read again.
Expired revocations leave memory at every check; `purge` also deletes them from the
table, as one of the periodic purges (app/core/tasks.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Literal

import asyncpg
import orjson

from app.auth.tokens import Principal
from app.core.listen import Listener
from app.core.metrics import REVOCATIONS_LIVE

logger = logging.getLogger(__name__)

Kind = Literal["jti", "token", "sid"]
Entry = tuple[Kind, str, str, float]  # kind, sub, value, expires (unix seconds)

CHANNEL = "bff_revocations"
APPLICATION_NAME = "auth0-bff-revocations"  # names the listener in pg_stat_activity
MAX_KEY_LENGTH = 128  # longer ids are stored as a digest (NOTIFY payloads are 8000 bytes)

REVOKE = """
WITH revoked AS (
    INSERT INTO revocations AS r (kind, sub, value, expires_at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
    ON CONFLICT (kind, sub, value)
        DO UPDATE SET expires_at = greatest(r.expires_at, EXCLUDED.expires_at)
    RETURNING kind, sub, value, extract(epoch FROM expires_at)::float8 AS expires
)
SELECT pg_notify($5, json_agg(json_build_array(kind, sub, value, expires))::text) FROM revoked
"""
LOAD_LIVE = """
SELECT kind, sub, value, extract(epoch FROM expires_at)::float8 AS expires
FROM revocations WHERE expires_at > now()
"""
PURGE_EXPIRED = "DELETE FROM revocations WHERE expires_at <= now()"


def compact(value: str) -> str:
    """The form an id is stored in: itself, or a digest when it is too long to notify."""
    if len(value) <= MAX_KEY_LENGTH:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def token_digest(principal: Principal) -> str:
    """Names a token without `jti`: a digest of its verified claims, which include its
    `iat`, `exp` and `sub`. The verifier does not hand out the raw token, and two tokens
    with identical claims are the same grant."""
    canonical = orjson.dumps(principal.claims, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


class RevocationStore(Listener):
    """The process's view of every live revocation; one per process.

    `is_revoked` is what `TokenVerifier.revocation_check` calls. `session_seconds` keeps a
    revoked `sid` for at least that long: tokens of the session issued before the sign-out
    (another tab, another audience) may expire later than the one presented.
    """

    def __init__(
        self,
        *,
        leeway_seconds: float = 30.0,
        session_seconds: float = 30 * 86_400.0,
        channel: str = CHANNEL,
        keepalive_seconds: float = 5.0,
        reconnect_max_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            channel,
            keepalive_seconds=keepalive_seconds,
            reconnect_max_seconds=reconnect_max_seconds,
        )
        self.leeway_seconds = leeway_seconds
        self.session_seconds = session_seconds
        self.reloads = 0
        self._clock = clock
        self._revoked: dict[str, dict[tuple[str, str], float]] = {}

    # --- The check (hot path: no I/O, no allocation when the user has no revocations) ---

    def is_revoked(self, principal: Principal) -> bool:
        """True when the token's `jti` (or digest) or its `sid` is revoked for its user."""
        entries = self._revoked.get(compact(principal.sub))
        if not entries:
            return False
        if principal.sid is not None and ("sid", compact(principal.sid)) in entries:
            return True
        if principal.jti is not None:
            return ("jti", compact(principal.jti)) in entries
        return ("token", token_digest(principal)) in entries

    @property
    def size(self) -> int:
        return sum(len(entries) for entries in self._revoked.values())

    # --- Revoking ----------------------------------------------------------------------

    def entries_for(self, principal: Principal) -> list[Entry]:
        """What signing out with this token revokes, and until when.

        A revocation outlives `exp` by the verifier's leeway, which still accepts the token
        that long after it expires.
        """
        token_until = principal.exp + self.leeway_seconds
        sub = compact(principal.sub)
        entries: list[Entry] = []
        if principal.jti is not None:
            entries.append(("jti", sub, compact(principal.jti), token_until))
        else:
            entries.append(("token", sub, token_digest(principal), token_until))
        if principal.sid is not None:
            session_until = max(token_until, self._clock() + self.session_seconds)
            entries.append(("sid", sub, compact(principal.sid), session_until))
        return entries

    async def revoke(self, conn: asyncpg.Connection, principal: Principal) -> list[Entry]:
        """Store the token's and session's revocation on `conn` (the caller's transaction)
        and notify every copy; this copy refuses the token at once.

        The local set is updated before the caller commits on purpose: if the commit fails,
        the user still wanted this token dead, and the worst case is that only this copy
        refuses it until restart.
        """
        entries = self.entries_for(principal)
        await conn.execute(
            REVOKE,
            [e[0] for e in entries],
            [e[1] for e in entries],
            [e[2] for e in entries],
            [dt.datetime.fromtimestamp(e[3], dt.UTC) for e in entries],
            self.channel,
        )
        self._remember(entries)
        return entries

    def _remember(self, entries: Iterable[Entry]) -> None:
        for kind, sub, value, expires in entries:
            known = self._revoked.setdefault(sub, {})
            known[(kind, value)] = max(expires, known.get((kind, value), expires))
        REVOCATIONS_LIVE.set(self.size)

    def _forget_expired(self) -> None:
        now = self._clock()
        for sub in list(self._revoked):
            live = {key: until for key, until in self._revoked[sub].items() if until > now}
            if live:
                self._revoked[sub] = live
            else:
                del self._revoked[sub]
        REVOCATIONS_LIVE.set(self.size)

    # --- Listening (app/core/listen.py keeps the connection) -------------------------

    what = "revocation"
    application_name = APPLICATION_NAME

    async def on_listening(self, conn: asyncpg.Connection) -> None:
        """Every (re)connection reads the live revocations again, after LISTEN."""
        rows = await conn.fetch(LOAD_LIVE, timeout=30)
        self._remember((r["kind"], r["sub"], r["value"], r["expires"]) for r in rows)
        self.reloads += 1
        logger.info("listening for revocations; %d live", len(rows))

    def on_notification(self, payload: str) -> None:
        try:
            items = orjson.loads(payload)
            entries = [
                (kind, sub, value, float(expires))
                for kind, sub, value, expires in items
                if kind in ("jti", "token", "sid") and isinstance(sub, str)
            ]
        except (ValueError, TypeError):  # not ours, or garbled: the next reload has it
            logger.warning("ignoring an unreadable revocation notification")
            return
        self._remember(entries)

    def on_check(self) -> None:
        self._forget_expired()

    async def purge(self, conn: asyncpg.Connection) -> None:
        """Drop expired revocations here and in the table (a periodic purge)."""
        self._forget_expired()
        await conn.execute(PURGE_EXPIRED, timeout=30)
