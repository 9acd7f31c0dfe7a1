"""The audit tests' fixtures: pools as the application role, and the callers' tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from app.core.db import asyncpg_dsn
from devkit.db import ProvisionedDatabase
from tests.audit.support import READ
from tests.helpers import bearer


@pytest.fixture
async def app_pool(database: ProvisionedDatabase) -> AsyncIterator[asyncpg.Pool]:
    """Connections as the application role (INSERT and SELECT on the audit log only)."""
    pool = await asyncpg.create_pool(asyncpg_dsn(database.app_url), min_size=2, max_size=30)
    yield pool
    await pool.close()


@pytest.fixture
async def writer(database: ProvisionedDatabase) -> AsyncIterator[asyncpg.Pool]:
    """The application role, for writing events the way the service does."""
    pool = await asyncpg.create_pool(asyncpg_dsn(database.app_url), min_size=1, max_size=20)
    yield pool
    await pool.close()


@pytest.fixture
def acme(mint: Callable[..., str]) -> dict[str, str]:
    return bearer(mint(sub="auth0|admin-acme", permissions=READ, org_id="acme"))


@pytest.fixture
def globex(mint: Callable[..., str]) -> dict[str, str]:
    return bearer(mint(sub="auth0|admin-globex", permissions=READ, org_id="globex"))


@pytest.fixture
def unprivileged(mint: Callable[..., str]) -> dict[str, str]:
    return bearer(mint(sub="auth0|clerk", permissions=["read:patients"], org_id="acme"))
