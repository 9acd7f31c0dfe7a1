"""A cookie session's token for another API: got from the tenant with the session's refresh
token and the API's `audience` (Auth0's multi-resource refresh tokens), kept per session and
audience, and got again once across every copy when it is due, as the session's own
refresh is (app/session/lifecycle.py).

Within a process one task per session and audience gets it and the others wait for it;
across copies `SELECT ... FOR UPDATE` on the session's row serialises them, and whoever
gets the lock second finds the fresh token stored and uses it. The same lock serialises
these grants with the session's own refresh, so a rotated refresh token is never used
twice. Tokens are stored sealed (SESSION_ENCRYPTION_KEY) and kept in memory for the copy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid

from app.core.db import connection, transaction
from app.core.errors import Unauthorized, UpstreamError
from app.core.metrics import REMOTE_TOKENS
from app.remote import repository
from app.remote.runtime import AudienceToken, AudienceTokens
from app.session import repository as sessions
from app.session.cache import Session
from app.session.crypto import Undecryptable
from app.session.dpop import SessionKey
from app.session.oauth import GrantRefused
from app.session.runtime import SessionRuntime

logger = logging.getLogger(__name__)

MAX_CACHED = 10_000  # tokens a copy keeps in memory; past it the oldest go (still stored)


async def token_for(
    tokens: AudienceTokens,
    session: Session,
    audience: str,
    scopes: tuple[str, ...],
    *,
    refused: str | None = None,
) -> AudienceToken:
    """The session's token for `audience`; a new one when the one held is due or is
    `refused` (an upstream answered 401 to it)."""
    key = (session.id, audience)
    found = tokens.cached.get(key)
    if tokens.fresh(found) and (found is None or found.token != refused):
        assert found is not None
        return found
    stored = await _stored(tokens, session.id, audience)
    if tokens.fresh(stored) and stored is not None and stored.token != refused:
        _remember(tokens, key, stored)
        return stored
    task = tokens.getting.get(key)
    if task is None:
        task = asyncio.get_running_loop().create_task(
            _get_locked(tokens, session.id, audience, scopes, refused)
        )
        tokens.getting[key] = task
        task.add_done_callback(lambda _: tokens.getting.pop(key, None))
    # Shielded: a caller that goes away does not cancel the grant the others await.
    got = await asyncio.shield(task)
    _remember(tokens, key, got)
    return got


def _remember(tokens: AudienceTokens, key: tuple[uuid.UUID, str], found: AudienceToken) -> None:
    tokens.cached[key] = found
    while len(tokens.cached) > MAX_CACHED:
        tokens.cached.pop(next(iter(tokens.cached)))


async def _stored(
    tokens: AudienceTokens, session_id: uuid.UUID, audience: str
) -> AudienceToken | None:
    async with connection(tokens.sessions.database) as conn:
        row = await repository.select_token(conn, session_id, audience)
    return _open(tokens, row["access_token"], row["expires_at"]) if row else None


def _open(tokens: AudienceTokens, sealed: bytes, expires_at: dt.datetime) -> AudienceToken | None:
    try:
        return AudienceToken(tokens.sessions.box.open(sealed), expires_at.timestamp())
    except Undecryptable:
        return None  # a key retired since: get a new one


async def _get_locked(
    tokens: AudienceTokens,
    session_id: uuid.UUID,
    audience: str,
    scopes: tuple[str, ...],
    refused: str | None,
) -> AudienceToken:
    runtime = tokens.sessions
    async with transaction(runtime.database) as conn:
        row = await sessions.lock_session(conn, session_id)
        if row is None:
            raise Unauthorized("the session has ended; sign in again")
        stored = await repository.select_token(conn, session_id, audience)
        if stored is not None:
            held = _open(tokens, stored["access_token"], stored["expires_at"])
            if tokens.fresh(held) and held is not None and held.token != refused:
                return held  # another request or copy got it while we queued
        refresh_token, key = _credentials(runtime, row["refresh_token"], row["dpop_key"])
        tokens.grants += 1
        try:
            got = await runtime.oauth.refresh(
                refresh_token, key, audience=audience, scope=" ".join(scopes) or None
            )
        except GrantRefused as exc:
            REMOTE_TOKENS.labels(kind="user", outcome="refused").inc()
            logger.warning("the tenant refused a token for a remote API's audience (%s)", exc.error)
            if exc.error == "invalid_grant":
                raise Unauthorized("the session can no longer get tokens; sign in again") from None
            raise UpstreamError("the identity provider refused a token for the API") from None
        if key is not None and not got.bound:
            raise UpstreamError("the identity provider did not bind the token (DPoP)")
        expires = runtime.clock() + got.expires_in
        await repository.store_token(
            conn,
            session_id,
            audience,
            runtime.box.seal(got.access_token),
            dt.datetime.fromtimestamp(expires, dt.UTC),
        )
        if got.refresh_token is not None:
            await repository.update_refresh_token(
                conn, session_id, runtime.box.seal(got.refresh_token)
            )
    REMOTE_TOKENS.labels(kind="user", outcome="ok").inc()
    return AudienceToken(got.access_token, expires)


def _credentials(
    runtime: SessionRuntime, sealed_refresh: bytes | None, sealed_key: bytes | None
) -> tuple[str, SessionKey | None]:
    if sealed_refresh is None:
        raise Unauthorized("the session has no refresh token; sign in again")
    try:
        refresh_token = runtime.box.open(sealed_refresh)
        key = SessionKey.from_json(runtime.box.open(sealed_key)) if sealed_key else None
    except (Undecryptable, ValueError):
        raise Unauthorized("the session cannot be read; sign in again") from None
    return refresh_token, key


def session_key(runtime: SessionRuntime, session: Session) -> SessionKey | None:
    """The session's DPoP key, when its tokens are bound to one."""
    if session.dpop_key is None:
        return None
    try:
        return SessionKey.from_json(runtime.box.open(session.dpop_key))
    except (Undecryptable, ValueError):
        raise Unauthorized("the session cannot be read; sign in again") from None
