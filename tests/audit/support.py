"""What the audit tests share: the scopes and callers, writing events as the service does,
and reading the stored log and its chains back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.audit.events import Actor, Event
from app.audit.record import record_event, record_events
from app.audit.verify import verify_chain

READ = ["read:audit_events"]
ACME, GLOBEX = "org:acme", "org:globex"
# The audit event shape API.md fixes (more fields may be added).
EVENT_FIELDS = {
    *("seq", "id", "recorded_at", "action", "outcome", "actor", "client_id", "source_ip"),
    *("entity_type", "entity_id", "patient_id", "request_id", "detail"),
}

ACTOR = Actor(
    scope="org:acme",
    sub="auth0|alice",
    client_id="spa",
    session_id="sid-1",
    token_id="jti-1",
    source_ip="203.0.113.9",
    user_agent="pytest",
    request_id="req-1",
)


async def seed(pool: asyncpg.Pool, scope: str, *events: Event, **actor: Any) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await record_events(conn, Actor(scope=scope, **actor), events)


async def actions(owner: asyncpg.Connection) -> list[str]:
    """Every stored action, in seq order: what a test checks was (or was not) recorded."""
    return [r["action"] for r in await owner.fetch("SELECT action FROM audit_events ORDER BY seq")]


def window(**extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    since, until = (now - timedelta(days=1)).isoformat(), (now + timedelta(days=1)).isoformat()
    return {"since": since, "until": until, **extra}


def recent() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(days=1), now + timedelta(days=1)


async def record(pool: asyncpg.Pool, actor: Actor, *events: Event) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await record_events(conn, actor, events)


async def abandoned(pool: asyncpg.Pool, actor: Actor, event: Event) -> None:
    """Record inside a transaction that then fails and rolls back."""
    async with pool.acquire() as conn, conn.transaction():
        await record_event(conn, actor, event)
        raise RuntimeError("the change failed")


async def verify(pool: asyncpg.Pool, scope: str) -> Any:
    async with pool.acquire() as conn:
        return await verify_chain(conn, scope, *recent())


async def chain(owner: asyncpg.Connection, scope: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await owner.fetch(
        "SELECT *, detail::text AS detail_text FROM audit_events WHERE scope = $1 ORDER BY seq",
        scope,
    )
    return rows
