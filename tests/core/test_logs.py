"""Nothing personal in the log: a database error's details (the DETAIL line, the row it
quotes, the key it names) never reach a log line, whichever way the error is logged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.core.db import asyncpg_dsn
from app.core.logs import JsonFormatter
from app.http.middleware import Metrics, RequestContextMiddleware
from devkit.db import ProvisionedDatabase
from tests.fixtures.leaks import DATABASE_DETAIL

EMAIL = "jane.doe@example.com"
LONG_SUB = "auth0|" + "a" * 300
INSERT_REGISTRATION = "INSERT INTO registrations (auth0_user_id, email) VALUES ($1, $2)"
logger = logging.getLogger("tests.security.logs")


@pytest.fixture
async def conn(database: ProvisionedDatabase) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(asyncpg_dsn(database.owner_url))
    yield connection
    await connection.close()


async def refused_registration(conn: asyncpg.Connection) -> asyncpg.PostgresError:
    """A 306-character user id with an email, refused by the table."""
    try:
        await conn.execute(INSERT_REGISTRATION, LONG_SUB, EMAIL)
    except asyncpg.PostgresError as exc:
        return exc
    raise AssertionError("the row was accepted")


async def duplicate_key(conn: asyncpg.Connection) -> asyncpg.PostgresError:
    await conn.execute(INSERT_REGISTRATION, EMAIL, None)
    try:
        await conn.execute(INSERT_REGISTRATION, EMAIL, None)
    except asyncpg.PostgresError as exc:
        return exc
    raise AssertionError("the duplicate was accepted")


def formatted(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [JsonFormatter().format(record) for record in caplog.records]


def assert_clean(line: str) -> None:
    assert EMAIL not in line and LONG_SUB not in line
    assert DATABASE_DETAIL.search(line) is None, line


class TestDatabaseErrorsInLogs:
    async def test_the_leak_check_knows_what_a_detail_looks_like(
        self, conn: asyncpg.Connection
    ) -> None:
        for error in (await refused_registration(conn), await duplicate_key(conn)):
            assert DATABASE_DETAIL.search(str(error)) and EMAIL in str(error)

    async def test_a_traceback_names_the_constraint_not_the_row(
        self, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
    ) -> None:
        error = await refused_registration(conn)
        try:
            raise RuntimeError("registering failed") from error
        except RuntimeError:
            logger.exception("sign-up failed")
        [line] = formatted(caplog)
        assert_clean(line)
        assert "CheckViolationError: SQLSTATE 23514, constraint registrations_" in line
        assert "The above exception was the direct cause" in line
        assert "RuntimeError: registering failed" in line

    async def test_an_error_as_an_argument_or_extra_value(
        self, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
    ) -> None:
        error = await duplicate_key(conn)
        logger.warning("insert failed: %s", error)
        logger.warning("insert failed", extra={"error": error})
        logger.warning(error)
        lines = formatted(caplog)
        assert len(lines) == 3
        for line in lines:
            assert_clean(line)
            assert "SQLSTATE 23505" in line

    def test_a_validation_error_names_fields_not_values(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Body(BaseModel):
            email: int

        try:
            Body.model_validate({"email": EMAIL})
        except ValidationError:
            logger.exception("unexpected body")
        [line] = formatted(caplog)
        assert EMAIL not in line and "email" in line

    async def test_an_unexpected_error_answered_500_is_logged_clean(
        self, database: ProvisionedDatabase, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def register(request: Request) -> Response:
            conn = await asyncpg.connect(asyncpg_dsn(database.owner_url))
            try:
                await conn.execute(INSERT_REGISTRATION, LONG_SUB, EMAIL)
            finally:
                await conn.close()
            return Response(status_code=201)

        app = RequestContextMiddleware(
            Starlette(routes=[Route("/", register, methods=["POST"])]),
            metrics=Metrics(),
            max_body_bytes=1024,
        )
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.post("/")
        assert response.status_code == 500
        assert EMAIL not in response.text
        lines = [line for line in formatted(caplog) if '"unhandled exception"' in line]
        assert len(lines) == 1
        assert_clean(lines[0])
        assert "SQLSTATE 23514" in lines[0]
