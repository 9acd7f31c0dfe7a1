"""How cookie sessions end: one on its own (sign-out, a refused token), one of a user on an
organisation admin's word, every session of a back-channel logout, the periodic purge of
expired ones, and revoking a refresh token at the tenant. Each end is recorded and dropped
from every copy's cache (here at once, the other copies on NOTIFY)."""

from __future__ import annotations

import logging
import uuid

import asyncpg

from app.audit.events import Actor
from app.audit.record import record_events
from app.core.db import connection, transaction
from app.session import repository
from app.session.events import ended_event
from app.session.runtime import SessionRuntime

logger = logging.getLogger(__name__)

PURGE_BATCH = 100


async def end(
    runtime: SessionRuntime,
    session_id: uuid.UUID,
    actor: Actor,
    reason: str,
    *,
    action: str = "session.ended",
) -> repository.Ended | None:
    """Delete the session, record its end, tell every copy; None if it had ended."""
    async with transaction(runtime.database) as conn:
        ended = await repository.end_session(conn, session_id)
        if ended is not None:
            await record_events(
                conn, runtime.actor_for(actor, ended), [ended_event(ended, reason, action)]
            )
    runtime.cache.drop_sessions({session_id})  # here at once; the other copies on NOTIFY
    return ended


async def of_user(
    runtime: SessionRuntime, sub: str, scope: str, limit: int = 50
) -> list[asyncpg.Record]:
    """A user's live sessions in `scope` (their times), newest first."""
    async with connection(runtime.database) as conn:
        return await repository.sessions_of_user(conn, sub, scope, limit)


async def end_for(
    runtime: SessionRuntime, session_id: uuid.UUID, actor: Actor, *, sub: str
) -> repository.Ended | None:
    """End a session of `sub` in the actor's scope on the actor's word (an organisation
    admin), recorded with the actor as who ended it; None when there is no such session."""
    async with transaction(runtime.database) as conn:
        if not await repository.is_session_of_user(conn, session_id, sub, actor.scope):
            return None
        ended = await repository.end_session(conn, session_id)
        if ended is not None:
            await record_events(conn, actor, [ended_event(ended, "ended_by_admin")])
    runtime.cache.drop_sessions({session_id})
    return ended


async def end_matching(
    runtime: SessionRuntime,
    conn: asyncpg.Connection,
    actor: Actor,
    *,
    sub: str | None,
    sid: str | None,
) -> list[repository.Ended]:
    """End every session of `sub` and/or `sid` inside the caller's transaction (the
    back-channel logout), recording each end in its scope, scopes in a fixed order."""
    found = await repository.sessions_of(conn, sub=sub, sid=sid)
    if not found:
        return []
    ended = await repository.end_sessions(conn, [r["id"] for r in found])
    for scope in sorted({e.scope for e in ended}):
        mine = [e for e in ended if e.scope == scope]
        events = [ended_event(e, "backchannel_logout") for e in mine]
        await record_events(conn, runtime.actor_for(actor, mine[0]), events)
    runtime.cache.drop_sessions({e.id for e in ended})
    return ended


async def purge(runtime: SessionRuntime, conn: asyncpg.Connection) -> None:
    """End sessions past their idle or absolute time, each recorded (a periodic purge),
    and forget finished sign-ins and old logout token ids."""
    await repository.purge_expired(conn)
    system = Actor(scope="system")
    for _ in range(100):
        rows = await repository.expired_sessions(conn, PURGE_BATCH)
        for row in rows:
            reason = "absolute_timeout" if row["absolute"] else "idle_timeout"
            async with conn.transaction():
                ended = await repository.end_session(conn, row["id"])
                if ended is not None:
                    await record_events(
                        conn, runtime.actor_for(system, ended), [ended_event(ended, reason)]
                    )
        if len(rows) < PURGE_BATCH:
            return


async def revoke_quietly(runtime: SessionRuntime, sealed_refresh_token: bytes | None) -> bool:
    """Revoke a refresh token at the tenant; a failure is logged, never raised (the
    session is already gone here)."""
    if sealed_refresh_token is None:
        return False
    try:
        await runtime.oauth.revoke(runtime.box.open(sealed_refresh_token))
    except Exception as exc:  # whatever the tenant did, signing out goes on
        logger.warning("revoking a refresh token at sign-out failed (%s)", type(exc).__name__)
        return False
    return True
