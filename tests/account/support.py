"""What the flow tests share: the caller, the JWKS fetch every flow starts with, the audit
rows of an action, and a database outage."""

from __future__ import annotations

import asyncpg

from devkit.db import ProvisionedDatabase

USER = "auth0|user-1"

JWKS = ("auth0", "GET /.well-known/jwks.json")


async def audit_rows(owner: asyncpg.Connection, action: str) -> list[asyncpg.Record]:
    return await owner.fetch("SELECT * FROM audit_events WHERE action = $1 ORDER BY seq", action)


class DatabaseOutage:
    """The database refuses new connections and drops the app's open ones."""

    def __init__(self, database: ProvisionedDatabase) -> None:
        self.database = database

    async def __aenter__(self) -> None:
        self.admin = await asyncpg.connect(self.database.admin_url)
        await self.admin.execute(f'ALTER DATABASE "{self.database.name}" ALLOW_CONNECTIONS false')
        await self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND usename = $2",
            self.database.name,
            self.database.app_role,
        )

    async def __aexit__(self, *exc: object) -> None:
        await self.admin.execute(f'ALTER DATABASE "{self.database.name}" ALLOW_CONNECTIONS true')
        await self.admin.close()
