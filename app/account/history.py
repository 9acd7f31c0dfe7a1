"""A user's sign-in history: the service's own sign-in events and Auth0's login logs, read
from the audit log across every scope."""

from __future__ import annotations

import datetime as dt

import asyncpg

from app.account.logtypes import SIGN_IN_ACTIONS

# Actions shown as sign-in history: the service's own and the Auth0 log types mapped to them
# (app/account/logstream.py). The first condition repeats the partial index's predicate (0004).
HISTORY_ACTIONS = ("user.signed_in", "user.signed_out", *SIGN_IN_ACTIONS)
_HISTORY = """
SELECT seq, occurred_at, action, outcome, outcome_reason, host(source_ip) AS ip, user_agent,
    client_id, detail->>'type' AS type, detail->>'client_name' AS client_name
FROM audit_events
WHERE actor = $1
  AND (action IN ('user.signed_in', 'user.signed_out') OR action LIKE 'idp.%')
  AND action = ANY($2::text[])
"""
HISTORY_FIRST_PAGE = _HISTORY + "ORDER BY occurred_at DESC, seq DESC LIMIT $3"
HISTORY_NEXT_PAGE = (
    _HISTORY + "AND (occurred_at, seq) < ($4, $5) ORDER BY occurred_at DESC, seq DESC LIMIT $3"
)


async def sign_in_history(
    conn: asyncpg.Connection,
    sub: str,
    *,
    limit: int,
    after: tuple[dt.datetime, int] | None = None,
) -> list[asyncpg.Record]:
    """The user's sign-in events across every scope, newest first (keyset by time, seq)."""
    if after is None:
        return list(await conn.fetch(HISTORY_FIRST_PAGE, sub, list(HISTORY_ACTIONS), limit))
    return list(
        await conn.fetch(HISTORY_NEXT_PAGE, sub, list(HISTORY_ACTIONS), limit, after[0], after[1])
    )
