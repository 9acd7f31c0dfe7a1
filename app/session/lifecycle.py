"""A stored session's life: started at the callback, found by cookie hash (cached in the
process), refreshed once across every copy, ended and recorded.

A cached session (app/session/cache.py) is used until the earliest of its idle end, absolute
end and refresh time; after that the row is read again (another copy may have restarted the
idle clock or refreshed). Every end and refresh NOTIFYs the hash, so every copy drops it.

Refresh: within a process one task per session refreshes and the others wait for it; across
copies `SELECT ... FOR UPDATE` on the session row serialises them, and whoever gets the
lock second finds fresh tokens and uses them. So ten racing requests over two workers
cause one refresh grant.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import replace

import asyncpg

from app.audit.events import Actor, Event
from app.audit.record import record_events, record_independently
from app.core.db import connection, transaction
from app.core.errors import UpstreamError, UpstreamUnavailable
from app.core.metrics import SESSION_REFRESHES
from app.session import repository
from app.session.cache import Session
from app.session.crypto import Undecryptable, new_cookie
from app.session.dpop import SessionKey
from app.session.endings import end
from app.session.events import ended_event, refresh_failed_event, started_event
from app.session.oauth import GrantRefused, TokenSet
from app.session.runtime import SessionRuntime

logger = logging.getLogger(__name__)

REFRESH_MARGIN_SECONDS = 60.0  # refresh an access token this long before it expires
# Refusals that mean the refresh token is dead (reused, revoked, expired), so the session is.
# Any other refusal (invalid_client: a misconfigured secret) keeps every session: 502.
ENDS_SESSION = frozenset(
    {"invalid_grant", "no_refresh_token", "undecryptable_refresh_token", "unreadable_dpop_key"}
)


class SessionInvalid(Exception):
    """No usable session for this cookie: unknown, expired or ended. `reason` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _epoch(value: dt.datetime) -> float:
    return value.timestamp()


def _fresh_until(session: Session) -> float:
    return min(
        session.idle_expires_at,
        session.absolute_expires_at,
        session.access_expires_at - REFRESH_MARGIN_SECONDS,
    )


# --- Starting --------------------------------------------------------------------------------


async def create(
    runtime: SessionRuntime,
    actor: Actor,
    *,
    sub: str,
    sid: str | None,
    scope: str,
    tokens: TokenSet,
    replacing: bytes | None = None,
    dpop_key: SessionKey | None = None,
) -> str:
    """Store a new session (with the DPoP key its tokens are bound to, sealed) and record
    `session.started`; the cookie value (a secret).

    In the same transaction, end the browser's previous session (`replacing`: the hash of
    the cookie the callback came with) and the user's oldest past SESSION_MAX_PER_USER,
    each recorded. Their refresh tokens are not revoked at the tenant: with "Refresh Token
    Revocation Deletes Grant" on, that would revoke the new session's too (same user, client
    and audience); they never left the server, and are deleted with their rows."""
    if tokens.id_token is None:
        raise ValueError("a session needs the ID token")
    cookie, cookie_hash = new_cookie()
    expires = dt.datetime.fromtimestamp(runtime.clock() + tokens.expires_in, dt.UTC)
    ended: list[tuple[repository.Ended, str]] = []
    async with transaction(runtime.database) as conn:
        session_id = await repository.insert_session(
            conn,
            cookie_hash,
            sub=sub,
            sid=sid,
            scope=scope,
            access_token=runtime.box.seal(tokens.access_token),
            refresh_token=runtime.box.seal(tokens.refresh_token) if tokens.refresh_token else None,
            id_token=runtime.box.seal(tokens.id_token),
            access_expires_at=expires,
            idle_seconds=runtime.idle_seconds,
            absolute_seconds=runtime.absolute_seconds,
            dpop_key=runtime.box.seal(dpop_key.to_json()) if dpop_key else None,
        )
        if replacing is not None:
            previous = await repository.end_by_cookie(conn, replacing)
            ended += [(previous, "signed_in_again")] if previous is not None else []
        keep = runtime.settings.sessions.max_per_user
        over = await repository.end_oldest_of_user(conn, sub, newest=session_id, keep=keep)
        ended += [(session, "session_limit") for session in over]
        event = started_event(
            session_id, runtime.idle_seconds, runtime.absolute_seconds, tokens.refresh_token
        )
        records = [(actor, event)]
        records += [(runtime.actor_for(actor, e), ended_event(e, why)) for e, why in ended]
        await _record_in_scope_order(conn, records)
    runtime.cache.drop_sessions({e.id for e, _ in ended})  # here at once; others on NOTIFY
    return cookie


async def _record_in_scope_order(
    conn: asyncpg.Connection, records: list[tuple[Actor, Event]]
) -> None:
    """Record each event as its actor, scopes in a fixed order: two transactions that record
    in scopes A and B in opposite orders would deadlock."""
    for actor, event in sorted(records, key=lambda record: record[0].scope):
        await record_events(conn, actor, [event])


# --- Finding ---------------------------------------------------------------------------------


async def current(
    runtime: SessionRuntime, cookie_hash: bytes, actor: Actor, *, refresh: bool = True
) -> Session:
    """The live session of this cookie, its access token refreshed when due (`refresh`),
    its idle clock restarted. `SessionInvalid` when there is none; an expired one is ended
    and recorded. `UpstreamUnavailable` when a refresh is due and the tenant is down."""
    now = runtime.clock()
    session = runtime.cache.get(cookie_hash)
    if session is None or now >= _fresh_until(session):
        session = await _load(runtime, cookie_hash, actor)
    if refresh and session.access_expires_at - REFRESH_MARGIN_SECONDS <= now:
        session = await _refresh(runtime, session, actor)
    if now - session.last_seen_at >= runtime.touch_seconds:
        session = await _touch(runtime, session)
    return session


async def _load(runtime: SessionRuntime, cookie_hash: bytes, actor: Actor) -> Session:
    generation = runtime.cache.generation
    async with connection(runtime.database) as conn:
        row = await repository.select_session(conn, cookie_hash)
    if row is None:
        runtime.cache.drop(cookie_hash)
        raise SessionInvalid("the session is unknown or has ended")
    now = runtime.clock()
    if _epoch(row["absolute_expires_at"]) <= now or _epoch(row["idle_expires_at"]) <= now:
        absolute = _epoch(row["absolute_expires_at"]) <= now
        reason = "absolute_timeout" if absolute else "idle_timeout"
        await end(runtime, row["id"], actor, reason)
        raise SessionInvalid("the session has expired")
    session = _decode(runtime, row, actor)
    runtime.cache.remember(session, generation)
    return session


def _decode(runtime: SessionRuntime, row: asyncpg.Record, actor: Actor) -> Session:
    try:
        access = runtime.box.open(row["access_token"])
        id_token = runtime.box.open(row["id_token"])
    except Undecryptable:
        logger.error("a session's tokens cannot be decrypted (SESSION_ENCRYPTION_KEY)")
        raise SessionInvalid("the session cannot be read") from None
    return Session(
        id=row["id"],
        cookie_hash=bytes(row["cookie_hash"]),
        sub=row["sub"],
        sid=row["sid"],
        scope=row["scope"],
        access_token=access,
        access_expires_at=_epoch(row["access_expires_at"]),
        id_token=id_token,
        refresh_token=row["refresh_token"],
        last_seen_at=_epoch(row["last_seen_at"]),
        idle_expires_at=_epoch(row["idle_expires_at"]),
        absolute_expires_at=_epoch(row["absolute_expires_at"]),
        dpop_key=row["dpop_key"],
    )


async def _touch(runtime: SessionRuntime, session: Session) -> Session:
    generation = runtime.cache.generation
    async with connection(runtime.database) as conn:
        idle = await repository.touch_session(conn, session.id, runtime.idle_seconds)
    if idle is None:
        runtime.cache.drop(session.cookie_hash)
        raise SessionInvalid("the session has ended")
    touched = replace(session, last_seen_at=runtime.clock(), idle_expires_at=_epoch(idle))
    if session.cookie_hash in runtime.cache:
        runtime.cache.remember(touched, generation)
    return touched


# --- Refreshing ------------------------------------------------------------------------------


async def _refresh(runtime: SessionRuntime, session: Session, actor: Actor) -> Session:
    task = runtime.refreshing.get(session.id)
    if task is None:
        task = asyncio.get_running_loop().create_task(_refresh_locked(runtime, session, actor))
        runtime.refreshing[session.id] = task
        task.add_done_callback(lambda _: runtime.refreshing.pop(session.id, None))
    # Shielded: a caller that goes away does not cancel the refresh the others await.
    return await asyncio.shield(task)


async def _refresh_locked(runtime: SessionRuntime, session: Session, actor: Actor) -> Session:
    actor = runtime.actor_for(actor, session)
    refused: GrantRefused | None = None
    try:
        async with transaction(runtime.database) as conn:
            row = await repository.lock_session(conn, session.id)
            if row is None:
                raise SessionInvalid("the session has ended")
            locked = _decode(runtime, row, actor)
            if locked.access_expires_at - REFRESH_MARGIN_SECONDS > runtime.clock():
                return locked  # another request or copy refreshed it while we queued
            try:
                tokens = await _grant(runtime, locked)
            except GrantRefused as exc:
                if exc.error not in ENDS_SESSION:  # e.g. invalid_client: our mistake
                    logger.error("the tenant refused a refresh grant (%s)", exc.error)
                    raise UpstreamError("the identity provider refused to refresh") from None
                refused = exc
                await repository.end_session(conn, session.id)
                await record_events(
                    conn,
                    actor,
                    [
                        refresh_failed_event(session, exc.error),
                        ended_event(session, "refresh_refused"),
                    ],
                )
            else:
                refreshed = await _store_refresh(runtime, conn, locked, tokens)
        if refused is None:  # committed
            SESSION_REFRESHES.labels(outcome="ok").inc()
            return refreshed
    except (UpstreamUnavailable, UpstreamError) as error:
        SESSION_REFRESHES.labels(outcome="failed").inc()
        await _record_quietly(runtime, actor, refresh_failed_event(session, error.detail))
        raise
    finally:
        runtime.cache.drop(session.cookie_hash)
    SESSION_REFRESHES.labels(outcome="ended").inc()
    logger.info("a session ended: the tenant refused its refresh token (%s)", refused)
    raise SessionInvalid("the session has ended; sign in again")


async def _grant(runtime: SessionRuntime, session: Session) -> TokenSet:
    if session.refresh_token is None:
        raise GrantRefused("no_refresh_token")
    try:
        refresh_token = runtime.box.open(session.refresh_token)
    except Undecryptable:
        raise GrantRefused("undecryptable_refresh_token") from None
    key = None
    if session.dpop_key is not None:
        try:
            key = SessionKey.from_json(runtime.box.open(session.dpop_key))
        except (Undecryptable, ValueError):
            raise GrantRefused("unreadable_dpop_key") from None
    runtime.refresh_grants += 1
    tokens = await runtime.oauth.refresh(refresh_token, key)
    if key is not None and not tokens.bound:
        raise UpstreamError("the identity provider did not bind the refreshed tokens (DPoP)")
    return tokens


async def _store_refresh(
    runtime: SessionRuntime, conn: asyncpg.Connection, session: Session, tokens: TokenSet
) -> Session:
    expires = runtime.clock() + tokens.expires_in
    refresh_sealed = (
        runtime.box.seal(tokens.refresh_token) if tokens.refresh_token else session.refresh_token
    )
    # A new ID token arrives over the same TLS channel as the code exchange's (OIDC Core
    # 3.1.3.7 6); it is kept for the logout hint and the user's name, never for access.
    id_token = tokens.id_token or session.id_token
    await repository.update_tokens(
        conn,
        session.id,
        access_token=runtime.box.seal(tokens.access_token),
        refresh_token=refresh_sealed,
        id_token=runtime.box.seal(id_token),
        access_expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
    )
    return replace(
        session,
        access_token=tokens.access_token,
        access_expires_at=expires,
        id_token=id_token,
        refresh_token=refresh_sealed,
    )


async def _record_quietly(runtime: SessionRuntime, actor: Actor, event: Event) -> None:
    try:
        await record_independently(runtime.database, actor, event)
    except Exception:
        logger.exception("recording a session event failed")
