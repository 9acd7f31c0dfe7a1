"""The session tables (migrations/0010_sessions.sql): sign-ins in progress, sessions, and
back-channel logout token ids. SQL only; every function takes the connection first.

Ending or refreshing a session NOTIFYs `CHANNEL` in the same statement, with the cookie
hashes concerned, so every copy drops them from its cache when the change commits
(app/session/listener.py).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg

CHANNEL = "bff_sessions"
# Over this many hashes a notification says "*" (drop everything): NOTIFY carries 8000 bytes.
MAX_NOTIFIED = 100

# --- Sign-ins in progress -------------------------------------------------------------------

INSERT_TRANSACTION = """
INSERT INTO login_transactions
    (cookie_hash, state, nonce, code_verifier, return_to, expires_at, address)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7)
"""
# Past a bound, the oldest go: every row at or before the newest one beyond it (found in
# the index alone), never the row just inserted. A row's created_at is its transaction's
# start, so only that row shares it.
EVICT_ADDRESS = """
DELETE FROM login_transactions
WHERE address = $1 AND cookie_hash <> $2 AND created_at <= (
    SELECT created_at FROM login_transactions WHERE address = $1
    ORDER BY created_at DESC OFFSET $3 LIMIT 1)
"""
EVICT_OLDEST = """
DELETE FROM login_transactions
WHERE cookie_hash <> $1 AND created_at <= (
    SELECT created_at FROM login_transactions ORDER BY created_at DESC OFFSET $2 LIMIT 1)
"""
# Used once: whatever the callback says, the row is gone after it looked.
TAKE_TRANSACTION = """
DELETE FROM login_transactions WHERE cookie_hash = $1
RETURNING state, nonce, code_verifier, return_to, expires_at > now() AS live
"""
# Kept an hour past expiry, so a late callback hears "took too long", not "unknown".
PURGE_TRANSACTIONS = "DELETE FROM login_transactions WHERE expires_at <= now() - interval '1 hour'"


@dataclass(frozen=True, slots=True)
class Transaction:
    state: str
    nonce: str
    code_verifier: bytes  # sealed
    return_to: str
    live: bool


async def insert_transaction(
    conn: asyncpg.Connection,
    cookie_hash: bytes,
    *,
    state: str,
    nonce: str,
    code_verifier: bytes,
    return_to: str,
    seconds: float,
    address: str | None,
) -> None:
    await conn.execute(
        INSERT_TRANSACTION, cookie_hash, state, nonce, code_verifier, return_to, seconds, address
    )


async def evict_transactions(
    conn: asyncpg.Connection,
    kept: bytes,
    *,
    address: str | None,
    per_address: int,
    total: int,
) -> tuple[int, int]:
    """Keep at most `per_address` sign-ins of `address` and `total` in all, `kept` (the one
    just inserted) among them; how many were evicted for each bound."""
    by_address = 0
    if address is not None:
        status = await conn.execute(EVICT_ADDRESS, address, kept, per_address)
        by_address = int(status.split()[-1])
    status = await conn.execute(EVICT_OLDEST, kept, total)
    return by_address, int(status.split()[-1])


async def take_transaction(conn: asyncpg.Connection, cookie_hash: bytes) -> Transaction | None:
    """The transaction bound to this cookie, deleted as it is read (single use)."""
    row = await conn.fetchrow(TAKE_TRANSACTION, cookie_hash)
    return None if row is None else Transaction(**dict(row))


# --- Sessions ---------------------------------------------------------------------------------

_COLUMNS = """id, cookie_hash, sub, sid, scope, access_token, refresh_token, id_token,
    access_expires_at, last_seen_at, idle_expires_at, absolute_expires_at, dpop_key"""

INSERT_SESSION = """
INSERT INTO browser_sessions (cookie_hash, sub, sid, scope, access_token, refresh_token, id_token,
    access_expires_at, idle_expires_at, absolute_expires_at, dpop_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
    now() + make_interval(secs => least($9::float8, $10::float8)),
    now() + make_interval(secs => $10::float8), $11)
RETURNING id
"""
SELECT_SESSION = f"SELECT {_COLUMNS} FROM browser_sessions WHERE cookie_hash = $1"
LOCK_SESSION = f"SELECT {_COLUMNS} FROM browser_sessions WHERE id = $1 FOR UPDATE"
UPDATE_TOKENS = """
WITH changed AS (
    UPDATE browser_sessions
    SET access_token = $2, refresh_token = $3, id_token = $4, access_expires_at = $5,
        refreshed_at = now()
    WHERE id = $1
    RETURNING cookie_hash
)
SELECT pg_notify($6, encode(cookie_hash, 'hex')) FROM changed
"""
# Idle time restarts with use, never past the absolute end; written at most once a minute or
# so per session (the caller decides), so a busy session costs no write per request.
TOUCH_SESSION = """
UPDATE browser_sessions
SET last_seen_at = now(),
    idle_expires_at = least(now() + make_interval(secs => $2), absolute_expires_at)
WHERE id = $1
RETURNING idle_expires_at
"""
_END = """
WITH ended AS (
    DELETE FROM browser_sessions WHERE {where}
    RETURNING id, cookie_hash, sub, sid, scope
), notified AS (
    SELECT pg_notify($2, CASE WHEN count(*) > {max_notified} THEN '*'
        ELSE string_agg(encode(cookie_hash, 'hex'), ',') END)
    FROM ended HAVING count(*) > 0
)
SELECT id, sub, sid, scope, (SELECT count(*) FROM notified) AS notified FROM ended
"""
END_BY_ID = _END.format(where="id = $1", max_notified=MAX_NOTIFIED)
END_BY_IDS = _END.format(where="id = ANY($1::uuid[])", max_notified=MAX_NOTIFIED)
END_BY_COOKIE = _END.format(where="cookie_hash = $1", max_notified=MAX_NOTIFIED)
# A user's sessions past the newest $4 besides $3 (the one just started, always kept).
END_OLDEST_OF_USER = _END.format(
    where="id IN (SELECT id FROM browser_sessions WHERE sub = $1 AND id <> $3"
    " ORDER BY created_at DESC, id DESC OFFSET $4)",
    max_notified=MAX_NOTIFIED,
)
SESSIONS_OF_USER = """
SELECT id, created_at, last_seen_at, idle_expires_at, absolute_expires_at FROM browser_sessions
WHERE sub = $1 AND scope = $2 ORDER BY created_at DESC, id DESC LIMIT $3
"""
SESSION_OF_USER = "SELECT id FROM browser_sessions WHERE id = $1 AND sub = $2 AND scope = $3"
SESSIONS_OF = """
SELECT id, scope FROM browser_sessions
WHERE ($1::text IS NULL OR sub = $1) AND ($2::text IS NULL OR sid = $2)
"""
EXPIRED_SESSIONS = """
SELECT id, sub, sid, scope, absolute_expires_at <= now() AS absolute
FROM browser_sessions WHERE idle_expires_at <= now() LIMIT $1
"""


@dataclass(frozen=True, slots=True)
class Ended:
    """A session that was just deleted: enough to record its end."""

    id: uuid.UUID
    sub: str
    sid: str | None
    scope: str


async def insert_session(
    conn: asyncpg.Connection,
    cookie_hash: bytes,
    *,
    sub: str,
    sid: str | None,
    scope: str,
    access_token: bytes,
    refresh_token: bytes | None,
    id_token: bytes,
    access_expires_at: dt.datetime,
    idle_seconds: float,
    absolute_seconds: float,
    dpop_key: bytes | None = None,
) -> uuid.UUID:
    session_id: uuid.UUID = await conn.fetchval(
        INSERT_SESSION,
        cookie_hash,
        sub,
        sid,
        scope,
        access_token,
        refresh_token,
        id_token,
        access_expires_at,
        idle_seconds,
        absolute_seconds,
        dpop_key,
    )
    return session_id


async def select_session(conn: asyncpg.Connection, cookie_hash: bytes) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(SELECT_SESSION, cookie_hash)
    return row


async def lock_session(conn: asyncpg.Connection, session_id: uuid.UUID) -> asyncpg.Record | None:
    """The session's row, locked until the caller's transaction ends (None: it has ended)."""
    row: asyncpg.Record | None = await conn.fetchrow(LOCK_SESSION, session_id)
    return row


async def update_tokens(
    conn: asyncpg.Connection,
    session_id: uuid.UUID,
    *,
    access_token: bytes,
    refresh_token: bytes | None,
    id_token: bytes,
    access_expires_at: dt.datetime,
) -> None:
    await conn.execute(
        UPDATE_TOKENS,
        session_id,
        access_token,
        refresh_token,
        id_token,
        access_expires_at,
        CHANNEL,
    )


async def touch_session(
    conn: asyncpg.Connection, session_id: uuid.UUID, idle_seconds: float
) -> dt.datetime | None:
    """Restart the idle clock; the new idle end (None: the session has ended)."""
    found: dt.datetime | None = await conn.fetchval(TOUCH_SESSION, session_id, idle_seconds)
    return found


async def end_session(conn: asyncpg.Connection, session_id: uuid.UUID) -> Ended | None:
    """Delete one session and notify every copy; None when it had already ended."""
    row = await conn.fetchrow(END_BY_ID, session_id, CHANNEL)
    return None if row is None else Ended(row["id"], row["sub"], row["sid"], row["scope"])


async def end_sessions(conn: asyncpg.Connection, session_ids: list[uuid.UUID]) -> list[Ended]:
    """Delete sessions and notify every copy, once; those that had not already ended."""
    rows = await conn.fetch(END_BY_IDS, session_ids, CHANNEL)
    return [Ended(r["id"], r["sub"], r["sid"], r["scope"]) for r in rows]


async def end_by_cookie(conn: asyncpg.Connection, cookie_hash: bytes) -> Ended | None:
    """Delete the session of a cookie and notify every copy; None when there is none."""
    row = await conn.fetchrow(END_BY_COOKIE, cookie_hash, CHANNEL)
    return None if row is None else Ended(row["id"], row["sub"], row["sid"], row["scope"])


async def end_oldest_of_user(
    conn: asyncpg.Connection, sub: str, *, newest: uuid.UUID, keep: int
) -> list[Ended]:
    """Delete the user's sessions beyond the newest `keep`, `newest` always among them."""
    rows = await conn.fetch(END_OLDEST_OF_USER, sub, CHANNEL, newest, keep - 1)
    return [Ended(r["id"], r["sub"], r["sid"], r["scope"]) for r in rows]


async def sessions_of_user(
    conn: asyncpg.Connection, sub: str, scope: str, limit: int
) -> list[asyncpg.Record]:
    """A user's live sessions in one scope, newest first: times only, never a token."""
    return list(await conn.fetch(SESSIONS_OF_USER, sub, scope, limit))


async def is_session_of_user(
    conn: asyncpg.Connection, session_id: uuid.UUID, sub: str, scope: str
) -> bool:
    return await conn.fetchval(SESSION_OF_USER, session_id, sub, scope) is not None


async def sessions_of(
    conn: asyncpg.Connection, *, sub: str | None, sid: str | None
) -> list[asyncpg.Record]:
    """Sessions matching a back-channel logout: by `sid`, by `sub`, or by both."""
    if sub is None and sid is None:
        return []
    return list(await conn.fetch(SESSIONS_OF, sub, sid))


async def expired_sessions(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    return list(await conn.fetch(EXPIRED_SESSIONS, limit))


# --- Back-channel logout token ids -----------------------------------------------------------

REMEMBER_JTI = """
INSERT INTO logout_token_ids (jti, expires_at) VALUES ($1, to_timestamp($2))
ON CONFLICT (jti) DO NOTHING
RETURNING jti
"""
PURGE_JTIS = "DELETE FROM logout_token_ids WHERE expires_at <= now()"


async def remember_jti(conn: asyncpg.Connection, jti: str, until: float) -> bool:
    """True when this `jti` was never seen before (and is now remembered until `until`)."""
    return await conn.fetchval(REMEMBER_JTI, jti, until) is not None


async def purge_expired(conn: asyncpg.Connection) -> None:
    """Forget sign-ins never completed and logout token ids past their use (a periodic
    purge). Expired sessions are ended by the service, which records each end."""
    await conn.execute(PURGE_TRANSACTIONS, timeout=30)
    await conn.execute(PURGE_JTIS, timeout=30)
