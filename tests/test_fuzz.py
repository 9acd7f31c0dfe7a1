"""Schema fuzzing: schemathesis generates requests from our own /openapi.json and sends them
to the live service (uvicorn, real database, stand-in tenant). No request may produce a 5xx,
an undocumented status code, or a body that breaks the documented schema, with a token that
holds every permission and with none.

A third pass sends hostile text to every parameter of every operation, one parameter at a
time and the others sane (a window for the audit log): a NUL somewhere in a string, digits of
other scripts (`²` passes `str.isdigit`), and dates at or past the ends of the calendar.

CI runs a short pass (FUZZ_EXAMPLES, default 15 per operation); a longer run:
`FUZZ_EXAMPLES=500 scripts/test tests/test_fuzz.py`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from app.auth.schemes import api_access
from app.core.settings import Settings
from app.core.settings.dpop import DPoPSettings
from app.http.openapi import build_openapi
from app.http.ops import API_TITLE, API_VERSION
from app.main import all_routes, create_app
from devkit.db import ProvisionedDatabase, drop, provision
from devkit.keys import ALL_PERMISSIONS, TokenMinter
from devkit.tenant.app import create_tenant_app
from devkit.tenant.state import TenantState

pytestmark = pytest.mark.slow  # about 2 min in all (20 s: hostile values), 12 s an operation

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
DOMAIN = "fuzz-tenant.local"
AUDIENCE = "https://fuzz.api"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread
        return None


def _serve(app: Any, port: int) -> _ThreadServer:
    server = _ThreadServer(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    return server


class Live:
    def __init__(self, base_url: str, minter: TokenMinter) -> None:
        self.base_url = base_url
        self.minter = minter

    def token(self) -> str:
        return self.minter.mint(
            "auth0|fuzzer", permissions=ALL_PERMISSIONS, **{"email_verified": True}
        )


@pytest.fixture(scope="module")
def live(postgres_server: str) -> Iterator[Live]:
    db: ProvisionedDatabase = asyncio.run(provision(postgres_server))
    minter = TokenMinter(DOMAIN, AUDIENCE)
    tenant = TenantState(minter, "fuzz-client", "fuzz-secret")
    tenant.org_members["org_fuzz"] = {"auth0|fuzzer"}
    tenant_port, app_port = _free_port(), _free_port()
    tenant_server = _serve(create_tenant_app(tenant), tenant_port)
    settings_ = Settings(
        database_url=db.app_url,
        migrations_database_url=db.owner_url,
        auth0_domain=DOMAIN,
        auth0_audience=AUDIENCE,
        auth0_client_id="fuzz-client",
        auth0_client_secret="fuzz-secret",
        app_secret_key="0123456789abcdef0123456789abcdef-test",
        auth0_base_url=f"http://127.0.0.1:{tenant_port}",
        auth0_log_stream_token="fuzz-hook-secret",
        public_url=f"http://127.0.0.1:{app_port}",
        rate_limit_per_ip="off",
        rate_limit_per_user="100000/60",
        _env_file=None,
    )
    app_server = _serve(create_app(settings_), app_port)
    try:
        served = httpx.get(f"http://127.0.0.1:{app_port}/openapi.json").json()
        assert served == DOCUMENT, "the fuzzed document is not the one the service serves"
        yield Live(f"http://127.0.0.1:{app_port}", minter)
    finally:
        app_server.should_exit = tenant_server.should_exit = True
        time.sleep(0.3)
        asyncio.run(drop(db))


# The document the service serves at /openapi.json is built from its route table and what
# its settings accept (DPOP_MODE allowed, the default; cookie mode off), so the same function
# builds it here at import time, where schemathesis needs it; `live` checks they are equal.
DOCUMENT = build_openapi(
    all_routes(), title=API_TITLE, version=API_VERSION, access=api_access(DPoPSettings())
)
schema = schemathesis.openapi.from_dict(DOCUMENT)
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
def test_with_every_permission(case: Any, live: Live) -> None:
    response = case.call(
        base_url=live.base_url, headers={"Authorization": f"Bearer {live.token()}"}
    )
    case.validate_response(response, checks=CHECKS)


@schema.parametrize()
@settings(
    max_examples=max(3, EXAMPLES // 3),
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_without_a_token(case: Any, live: Live) -> None:
    response = case.call(base_url=live.base_url)
    case.validate_response(response, checks=CHECKS)


# --- Hostile values, to every parameter --------------------------------------------------

_NUL = st.text(max_size=12).flatmap(
    lambda text: st.integers(0, len(text)).map(lambda at: text[:at] + "\x00" + text[at:])
)
# Decimal digits of other scripts and superscripts: `str.isdigit` is true, `int` reads some.
_NOT_ASCII_DIGITS = st.text(
    st.characters(categories=["Nd", "No"], max_codepoint=0xFFFF).filter(lambda c: c > "~"),
    min_size=1,
    max_size=6,
)
# The calendar's ends: in range as written, out of it in UTC or a step later.
_EDGE_DATES = st.builds(
    "{}{}".format,
    st.sampled_from(["", "eq", "ge", "gt", "le", "lt"]),
    st.sampled_from(
        [
            "9999-12-31",
            "9999-12",
            "9999",
            "9999-12-31T23:59Z",
            "9999-12-31T23:59:59.999999-14:00",
            "0001-01-01",
            "0001-01-01T00:00+05:00",
            "0001-01-01T00:00:00+14:00",
            "0000-01-01",
            "10000-01-01T00:00:00Z",
            "-0001-01-01",
        ]
    ),
)


_NOT_IN_A_SEGMENT = str.maketrans("", "", "/?#")


def _sane(name: str) -> Any:
    """A good value for the parameters without which a request stops before the database."""
    now = datetime.now(UTC)
    since, until = now - timedelta(days=1), now + timedelta(days=1)
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "date": ["ge" + since.strftime("%Y-%m-%dT%H:%M:%SZ"), "lt" + until.strftime("%Y-%m-%d")],
    }.get(name)


def _variants(case: Any, value: str) -> Iterator[Any]:
    """`case` once per parameter, that parameter set to `value` and the others sane."""
    operation = case.operation
    query_names = [p.name for p in operation.query]
    base = {name: sane for name in query_names if (sane := _sane(name)) is not None}
    for name in query_names:
        query = {**base, name: [value] if isinstance(base.get(name), list) else value}
        yield operation.Case(
            path_parameters=case.path_parameters,
            headers=case.headers,
            query=query,
            body=case.body,
            media_type=case.media_type,
        )
    # In a path, a value of its own: no `/`, `?` or `#`, and never a dot segment.
    segment = "x" + value.translate(_NOT_IN_A_SEGMENT)
    for name in (p.name for p in operation.path_parameters):
        yield operation.Case(
            path_parameters={**(case.path_parameters or {}), name: segment},
            headers=case.headers,
            query=base,
            body=case.body,
            media_type=case.media_type,
        )


@schema.given(hostile=st.tuples(_NUL, _NOT_ASCII_DIGITS, _EDGE_DATES))
@schema.parametrize()
@settings(
    max_examples=max(3, EXAMPLES // 3),
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_hostile_values_in_every_parameter(
    case: Any, hostile: tuple[str, str, str], live: Live
) -> None:
    headers = {"Authorization": f"Bearer {live.token()}"}
    for value in hostile:
        for variant in _variants(case, value):
            response = variant.call(base_url=live.base_url, headers=headers)
            variant.validate_response(response, checks=CHECKS)
            assert response.status_code < 500, (variant.path, variant.query, response.text)
