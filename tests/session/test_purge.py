"""The periodic purge: expired sessions ended and recorded, stale sign-ins and logout token
ids forgotten, everything live kept."""

from __future__ import annotations

import asyncpg
import httpx
from databases import Database

from app.auth.tokens import TokenVerifier
from app.core.db import connection
from app.core.settings import Settings
from app.session import endings
from app.session.crypto import TokenBox
from app.session.oauth import TenantOAuth
from app.session.runtime import SessionRuntime
from tests.helpers import audit_rows
from tests.session.support import ENCRYPTION_KEY, login, session_rows, start_login


async def test_purge_ends_expired_sessions_and_forgets_stale_rows(
    app: httpx.AsyncClient, settings: Settings, pool: Database, owner: asyncpg.Connection
) -> None:
    await login(app, "alice")
    await login(app, "bob")
    await start_login(app)
    await start_login(app)
    await owner.execute(
        "UPDATE browser_sessions SET idle_expires_at = now() - interval '1 second'"
        " WHERE sub = 'auth0|alice'"
    )
    await owner.execute(
        "UPDATE login_transactions SET expires_at = now() - interval '61 minutes'"
        " WHERE ctid = (SELECT ctid FROM login_transactions LIMIT 1)"
    )
    # Just expired: kept an hour, so its late callback says "took too long".
    await owner.execute(
        "UPDATE login_transactions SET expires_at = now() - interval '1 second'"
        " WHERE expires_at > now()"
    )
    await owner.execute(
        "INSERT INTO logout_token_ids (jti, expires_at) VALUES"
        " ('old', now() - interval '1 second'), ('new', now() + interval '1 hour')"
    )
    async with httpx.AsyncClient() as http:
        runtime = SessionRuntime(
            settings,
            pool,
            TenantOAuth(settings, http),
            TokenBox(ENCRYPTION_KEY),
            TokenVerifier(settings, http),
        )
        async with connection(pool) as conn:
            await endings.purge(runtime, conn)

    assert [r["sub"] for r in await session_rows(owner)] == ["auth0|bob"]
    assert await owner.fetchval("SELECT count(*) FROM login_transactions") == 1
    assert await owner.fetchval("SELECT array_agg(jti) FROM logout_token_ids") == ["new"]
    [ended] = await audit_rows(owner, "session.ended")
    assert (ended["actor"], ended["scope"]) == ("auth0|alice", "user:auth0|alice")
    assert '"reason": "idle_timeout"' in ended["detail"]
