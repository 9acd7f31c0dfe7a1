"""The console tests' fixtures: cookie mode on, the stand-in tenant behind respx, the app
running (as in tests/session/), and a clinician who may read patients but not the log."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import running_app
from tests.fixtures.standin import StandIn
from tests.session.support import session_settings

CLINICIAN_PERMISSIONS = ["read:patients", "create:patients", "update:patients"]


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return session_settings(database)


@pytest.fixture
async def app(settings: Settings, standin: StandIn) -> AsyncIterator[httpx.AsyncClient]:
    standin.state.user_permissions["auth0|clinician"] = CLINICIAN_PERMISSIONS
    async with running_app(settings) as http:
        yield http
