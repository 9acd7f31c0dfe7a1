"""The remote-API tests' fixtures: the stand-in upstream on a loopback port (a real server,
not a mock transport), a route table naming it, the app with cookie sessions on and the
stand-in tenant, reached both over httpx and as a bare ASGI app (for raw paths and
streaming without buffering)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from devkit.upstream import Upstream, serve_upstream
from tests.fixtures.standin import StandIn

pytest.register_assert_rewrite("tests.remote.support")

from tests.remote.support import Running, remote_settings, running, write_table  # noqa: E402


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with serve_upstream() as served:
        yield served


@pytest.fixture
def table(tmp_path: Path, upstream: Upstream) -> Path:
    return write_table(tmp_path, upstream.url)


@pytest.fixture
def settings(database: ProvisionedDatabase, table: Path) -> Settings:
    return remote_settings(database, table)


@pytest.fixture
async def app(settings: Settings, standin: StandIn) -> AsyncIterator[Running]:
    async with running(settings, standin) as started:
        yield started
