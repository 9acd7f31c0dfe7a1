"""The console's own SQL: the event before one in its scope's chain, the latest signed digests,
and the counts its charts draw."""

from __future__ import annotations

from datetime import datetime

import asyncpg

PREVIOUS_IN_CHAIN = (
    "SELECT seq, hash FROM audit_events WHERE scope = $1 AND seq < $2 ORDER BY seq DESC LIMIT 1"
)


async def previous_in_chain(
    conn: asyncpg.Connection, scope: str, seq: int
) -> asyncpg.Record | None:
    """The scope's event just before `seq` (its seq and hash), or None for the first."""
    row: asyncpg.Record | None = await conn.fetchrow(PREVIOUS_IN_CHAIN, scope, seq)
    return row


LATEST_DIGESTS = (
    "SELECT number, issued_at, kid, after_seq, watermark, heads, hash FROM audit_digests"
    " ORDER BY number DESC LIMIT $1"
)
# Events per hour of one scope's window, by action family and outcome (the scope's time index).
HOURLY = """
SELECT date_trunc('hour', recorded_at, 'UTC') AS hour, split_part(action, '.', 1) AS family,
       outcome, count(*) AS events
FROM audit_events WHERE scope = $1 AND recorded_at >= $2 AND recorded_at < $3
GROUP BY 1, 2, 3
"""
# Who disclosed most: successful reads and searches that named patients, and how many.
TOP_ACTORS = """
SELECT coalesce(e.actor, 'anonymous') AS actor, count(*) AS events,
       sum(cardinality(l.patient_ids)) AS patients
FROM audit_events e
JOIN audit_event_patients l ON l.seq = e.seq AND l.recorded_at = e.recorded_at
WHERE e.scope = $1 AND e.recorded_at >= $2 AND e.recorded_at < $3
  AND l.recorded_at >= $2 AND l.recorded_at < $3
  AND e.crud IN ('R', 'E') AND e.outcome = 'success'
GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $4
"""


async def latest_digests(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """The last signed digests, newest first."""
    return list(await conn.fetch(LATEST_DIGESTS, limit))


async def hourly_counts(
    conn: asyncpg.Connection, scope: str, since: datetime, until: datetime
) -> list[asyncpg.Record]:
    return list(await conn.fetch(HOURLY, scope, since, until))


async def top_actors(
    conn: asyncpg.Connection, scope: str, since: datetime, until: datetime, limit: int
) -> list[asyncpg.Record]:
    return list(await conn.fetch(TOP_ACTORS, scope, since, until, limit))


# A member's sign-ins as the API's history reads them (app/account/history.py), in one scope.
SIGN_INS = """
SELECT seq, occurred_at, action, outcome, outcome_reason, host(source_ip) AS ip, user_agent,
    client_id
FROM audit_events
WHERE actor = $1 AND scope = $2
  AND (action IN ('user.signed_in', 'user.signed_out') OR action LIKE 'idp.%')
  AND action = ANY($3::text[])
ORDER BY occurred_at DESC, seq DESC LIMIT $4
"""


async def sign_ins(
    conn: asyncpg.Connection, sub: str, scope: str, actions: list[str], limit: int
) -> list[asyncpg.Record]:
    """A user's latest sign-in events in one scope, newest first."""
    return list(await conn.fetch(SIGN_INS, sub, scope, actions, limit))
