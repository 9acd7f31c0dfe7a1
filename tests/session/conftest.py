"""The cookie-session tests' fixtures (cookie mode on, the stand-in tenant, the app running),
and their support module's asserts rewritten by pytest like a test module's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import running_app
from tests.fixtures.standin import StandIn

pytest.register_assert_rewrite("tests.session.support")

from tests.session.support import session_settings  # noqa: E402


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return session_settings(database)


@pytest.fixture
async def app(settings: Settings, standin: StandIn) -> AsyncIterator[httpx.AsyncClient]:
    """The app with cookie sessions on, the stand-in tenant behind respx."""
    async with running_app(settings) as http:
        yield http
