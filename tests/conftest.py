"""Test harness: a real Postgres, a fresh migrated database per test, Auth0 stubbed by respx.

Postgres, in order of preference: `DATABASE_URL` (a server where we may create databases),
the local server on 127.0.0.1:5432, else a throwaway embedded server (`pgserver`). Each
test gets its own database cloned from a migrated template (about 30 ms), so tests cannot
see each other's rows, audit chains included.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from databases import Database

from app.core.db import asyncpg_dsn, create_database
from app.core.logs import JsonFormatter, quiet_chatty_loggers
from app.core.settings import Settings
from app.dev.db import (
    LOCAL_SERVER_URL,
    ProvisionedDatabase,
    drop,
    embedded_server,
    provision,
    server_answers,
    with_credentials,
)
from app.dev.tenant import ALL_PERMISSIONS, SigningKey, TokenMinter
from app.main import create_app

TENANT_DOMAIN = "tenant.test.local"
TENANT_URL = "https://tenant.stub"
AUDIENCE = "https://api.test.local"
CLIENT_ID = "test-m2m-client"
CLIENT_SECRET = "test-client-secret-value"
LOG_STREAM_TOKEN = "test-log-stream-secret"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A URL on a Postgres server where the tests may create databases and roles."""
    url = os.environ.get("DATABASE_URL")
    if url:
        if not asyncio.run(server_answers(url)):
            pytest.exit(f"DATABASE_URL does not answer ({_where(url)}); fix it or unset it", 3)
        yield url
        return
    if asyncio.run(server_answers(LOCAL_SERVER_URL)):
        yield LOCAL_SERVER_URL
        return
    try:
        with embedded_server() as embedded_url:
            yield embedded_url
    except RuntimeError as exc:
        pytest.exit(str(exc), 3)


def _where(url: str) -> str:
    return with_credentials(url, password="")  # never print a password


@pytest.fixture(scope="session")
def template_db(postgres_server: str) -> Iterator[ProvisionedDatabase]:
    db = asyncio.run(provision(postgres_server, name=f"bff_test_{os.getpid()}"))
    yield db
    asyncio.run(drop(db))


_clone_ids = itertools.count()

# --- Leak check: nothing secret or personal in any log line of the whole run -------------
# Every log record of the session is formatted as production would (JSON lines) and kept;
# every token minted, the test secrets, and every patient value a test stored are
# registered; at the end of the run any registered value found in the log fails it.
_SENSITIVE: set[str] = {CLIENT_SECRET, LOG_STREAM_TOKEN}
_LOG_LINES: list[str] = []


class _KeepEverything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _LOG_LINES.append(self.format(record))
        except Exception:  # a record that cannot be formatted is still checked as text
            _LOG_LINES.append(repr(vars(record)))


_original_sign = SigningKey.sign


def _recording_sign(self: SigningKey, *args: Any, **kwargs: Any) -> str:
    token = _original_sign(self, *args, **kwargs)
    _SENSITIVE.add(token)
    _SENSITIVE.add(token.rsplit(".", 1)[-1])  # the signature alone is a secret too
    return token


SigningKey.sign = _recording_sign  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger().addHandler(_KeepEverything())
    logging.getLogger().setLevel(logging.INFO)  # as production runs
    quiet_chatty_loggers()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Short values (e.g. a two-letter name) would match by chance; tokens are long.
    needles = sorted(v for v in _SENSITIVE if len(v) >= 6)
    leaks = [(needle, line) for line in _LOG_LINES for needle in needles if needle in line]
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"LEAK CHECK FAILED: {len(leaks)} log line(s) hold a token, "
                "secret or patient value; the first:",
                red=True,
            )
            needle, line = leaks[0]
            reporter.write_line(line.replace(needle, "<<LEAKED VALUE>>")[:2000])
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif _LOG_LINES:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"leak check: {len(_LOG_LINES)} log lines, {len(needles)} sensitive values, no leak"
            )


async def _register_patient_values(owner_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(owner_url))
    try:
        if await conn.fetchval("SELECT to_regclass('patients')") is None:
            return
        rows = await conn.fetch(
            "SELECT given_name, family_name, identifier_value, email, phone FROM patients"
        )
    finally:
        await conn.close()
    for row in rows:
        _SENSITIVE.update(str(v) for v in row.values() if v)


@pytest.fixture
async def database(template_db: ProvisionedDatabase) -> AsyncIterator[ProvisionedDatabase]:
    """A fresh database for this test, migrated, with the app and owner roles."""
    name = f"{template_db.name}_{next(_clone_ids)}"
    admin = await asyncpg.connect(asyncpg_dsn(template_db.admin_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db.name}"')
    finally:
        await admin.close()
    provisioned = ProvisionedDatabase(
        admin_url=template_db.admin_url,
        name=name,
        owner_url=with_credentials(template_db.owner_url, database=name),
        app_url=with_credentials(template_db.app_url, database=name),
        app_role=template_db.app_role,
    )
    yield provisioned
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        await _register_patient_values(provisioned.owner_url)
    admin = await asyncpg.connect(asyncpg_dsn(template_db.admin_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def owner(database: ProvisionedDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the owner role, for assertions about what was stored."""
    conn = await asyncpg.connect(asyncpg_dsn(database.owner_url))
    yield conn
    await conn.close()


@pytest.fixture
async def pool(database: ProvisionedDatabase) -> AsyncIterator[Database]:
    """The application's pool, as the application role, connected (the service's own)."""
    connected = create_database(database.app_url, min_size=1, max_size=4)
    await connected.connect()
    yield connected
    await connected.disconnect()


def make_settings(database: ProvisionedDatabase, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database.app_url,
        "migrations_database_url": database.owner_url,
        "auth0_domain": TENANT_DOMAIN,
        "auth0_audience": AUDIENCE,
        "auth0_client_id": CLIENT_ID,
        "auth0_client_secret": CLIENT_SECRET,
        "auth0_base_url": TENANT_URL,
        "auth0_log_stream_token": LOG_STREAM_TOKEN,
        "db_pool_min_size": 1,
        "db_pool_max_size": 5,
        # Every test request comes from 127.0.0.1; tests of the limits turn them on.
        "rate_limit_per_ip": "off",
        "rate_limit_per_user": "off",
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database: ProvisionedDatabase) -> Settings:
    return make_settings(database)


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.generate(kid="test-key-1")


@pytest.fixture
def minter(signing_key: SigningKey) -> TokenMinter:
    """Mints tokens for the test tenant; `rotate()`/`revoke()` change what the JWKS serves."""
    return TokenMinter(TENANT_DOMAIN, AUDIENCE, keys=[signing_key])


@pytest.fixture
def mint(minter: TokenMinter) -> Callable[..., str]:
    """`mint(sub=..., permissions=..., **claims)`: a valid access token (claims may be None)."""

    def _mint(sub: str = "auth0|user-1", permissions: Any = ALL_PERMISSIONS, **claims: Any) -> str:
        return minter.mint(sub, permissions=permissions, **claims)

    return _mint


@pytest.fixture
def tenant(minter: TokenMinter) -> Iterator[respx.MockRouter]:
    """The Auth0 tenant at the transport: JWKS and the M2M token endpoint are stubbed; a test
    adds the Management API routes it needs and asserts on `tenant.calls`."""
    with respx.mock(base_url=TENANT_URL, assert_all_called=False, assert_all_mocked=True) as router:
        router.get("/.well-known/jwks.json", name="jwks").mock(
            side_effect=lambda request: httpx.Response(200, json=minter.jwks())
        )
        router.post("/oauth/token", name="oauth_token").mock(
            return_value=httpx.Response(
                200, json={"access_token": "m2m-token", "token_type": "Bearer", "expires_in": 86400}
            )
        )
        yield router


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, behind an httpx client that speaks ASGI in-process."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@pytest.fixture
async def client(settings: Settings, tenant: respx.MockRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


_WRITE = re.compile(r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+([a-z_]+)", re.IGNORECASE)
_READ = re.compile(r"\bFROM\s+([a-z_]+)", re.IGNORECASE)


# Server-side functions that write a table on the caller's behalf.
_WRITING_FUNCTIONS = {
    "audit_events_append(": "audit_events",
    "audit_events_append_one(": "audit_events",
    "audit_events_append_batch(": "audit_events",
}


def classify_sql(query: str) -> list[str]:
    """`write:<table>` for each table a statement changes, else `read:<table>`; asyncpg's
    own catalog look-ups are left out."""
    writes = [f"write:{t.lower()}" for t in _WRITE.findall(query)]
    writes += [f"write:{table}" for fn, table in _WRITING_FUNCTIONS.items() if fn in query]
    if writes:
        return writes
    return [
        f"read:{t.lower()}"
        for t in _READ.findall(query)
        if t.lower() not in {"unnest", "generate_series"} and not t.lower().startswith("pg_")
    ][:1]


@pytest.fixture
def interactions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """One ordered log of what the app did: ("auth0", "GET /path") for each request to the
    tenant (at the httpx transport) and ("db", "write:table"/"read:table") for each query
    (asyncpg's query logger), so a test can hold a flow to its sequence diagram."""
    log: list[tuple[str, str]] = []
    original_send = httpx.AsyncClient.send

    async def send(
        self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any
    ) -> httpx.Response:
        if request.url.host == httpx.URL(TENANT_URL).host:
            path = request.url.raw_path.split(b"?")[0].decode()
            log.append(("auth0", f"{request.method} {path}"))
        return await original_send(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", send)

    import app.core.db

    original_pool_of = app.core.db.pool_of

    def logging_query(record: Any) -> None:
        for entry in classify_sql(record.query):
            log.append(("db", entry))

    class LoggingPool:
        def __init__(self, pool: Any) -> None:
            self._pool = pool

        async def acquire(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109
            conn = await self._pool.acquire(timeout=timeout)
            conn.add_query_logger(logging_query)
            return conn

        async def release(self, conn: Any) -> None:
            conn.remove_query_logger(logging_query)
            await self._pool.release(conn)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._pool, name)

    monkeypatch.setattr(
        app.core.db, "pool_of", lambda database: LoggingPool(original_pool_of(database))
    )
    return log


def follows(log: list[tuple[str, str]], expected: list[tuple[str, str]]) -> bool:
    """True when `expected` occurs in `log` in order (other entries may come between)."""
    remaining = iter(log)
    return all(any(entry == step for entry in remaining) for step in expected)
