"""The remote part's SQL (migrations/0016_remote_audience_tokens.sql): a cookie session's
tokens for other audiences, and the session's rotated refresh token. Every function takes
the connection first."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

SELECT_HELD = """
SELECT access_token, expires_at FROM session_audience_tokens
WHERE session_id = $1 AND audience = $2
"""
UPSERT_HELD = """
INSERT INTO session_audience_tokens (session_id, audience, access_token, expires_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (session_id, audience)
DO UPDATE SET access_token = EXCLUDED.access_token, expires_at = EXCLUDED.expires_at
"""
# The grant rotated the session's refresh token: the session keeps the new one (its own
# refresh reads it under the same row lock).
UPDATE_SESSION_REFRESH = "UPDATE browser_sessions SET refresh_token = $2 WHERE id = $1"


async def select_token(
    conn: asyncpg.Connection, session_id: uuid.UUID, audience: str
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(SELECT_HELD, session_id, audience)
    return row


async def store_token(
    conn: asyncpg.Connection,
    session_id: uuid.UUID,
    audience: str,
    sealed: bytes,
    expires_at: dt.datetime,
) -> None:
    await conn.execute(UPSERT_HELD, session_id, audience, sealed, expires_at)


async def update_refresh_token(
    conn: asyncpg.Connection, session_id: uuid.UUID, sealed: bytes
) -> None:
    await conn.execute(UPDATE_SESSION_REFRESH, session_id, sealed)
