"""One audit event per forwarded call, never its body; a token never in the browser's
answer or the log; a 10 MiB answer relayed with flat memory."""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import Callable

import asyncpg
import orjson
import pytest

from devkit.upstream import Upstream
from tests.fixtures.tenant import AUDIENCE
from tests.remote.support import Running, raw_call
from tests.session.support import login, with_cookie


async def forwarded(owner: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await owner.fetch(
            "SELECT actor, scope, outcome, entity_id, detail FROM audit_events"
            " WHERE action = 'remote.forwarded' ORDER BY seq"
        )
    )


async def test_one_event_per_call_with_its_facts_and_no_body(
    app: Running, upstream: Upstream, owner: asyncpg.Connection, mint: Callable[..., str]
) -> None:
    token = mint(sub="auth0|caller-1")
    response = await app.http.post(
        "/remote/echo/secret-path",
        content=b"a body to forget",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    (event,) = await forwarded(owner)
    assert event["actor"] == "auth0|caller-1"
    assert event["outcome"] == "success"
    assert event["entity_id"] == "echo"
    detail = orjson.loads(event["detail"])
    assert detail == {
        "method": "POST",
        "status": 200,
        "upstream_status": 200,
        "request_bytes": 16,
        "response_bytes": len(response.content),
        "token_rule": "none",
        "token": "none",
        "audience": None,
    }
    assert "a body to forget" not in str(event) and "secret-path" not in str(event)


async def test_a_failed_call_is_recorded_as_failed(app: Running, owner: asyncpg.Connection) -> None:
    assert (await app.http.get("/remote/slow/slow/3000")).status_code == 504
    (event,) = await forwarded(owner)
    assert event["outcome"] == "failed"
    assert event["scope"] == "anonymous"


async def test_a_session_call_records_the_rule_and_audience(
    app: Running, owner: asyncpg.Connection
) -> None:
    cookie = with_cookie(await login(app.http))
    assert (await app.http.get("/remote/user/whoami", headers=cookie)).status_code == 200
    (event,) = await forwarded(owner)
    detail = orjson.loads(event["detail"])
    assert (detail["token_rule"], detail["token"], detail["audience"]) == ("user", "user", AUDIENCE)


async def test_a_refused_call_records_no_forwarding(
    app: Running, owner: asyncpg.Connection
) -> None:
    assert (await raw_call(app.asgi, "GET", b"/remote/plain/../x")).status == 400
    assert await forwarded(owner) == []


async def test_the_token_never_reaches_the_browser_or_the_log(
    app: Running, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cookie = with_cookie(await login(app.http))
    response = await app.http.get("/remote/user/whoami", headers=cookie)
    session = await app.http.get("/auth/session", headers=cookie)
    (token,) = upstream.tokens()
    for answer in (response, session):
        assert token not in answer.text
        assert all(token not in value for value in answer.headers.values())
    assert token not in caplog.text


async def test_ten_mebibytes_stream_with_flat_memory(app: Running, upstream: Upstream) -> None:
    size = 10 * 1024 * 1024
    await raw_call(app.asgi, "GET", b"/remote/big/bytes/1000", keep_body=False)  # warm up
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        answer = await raw_call(
            app.asgi, "GET", f"/remote/big/bytes/{size}".encode(), keep_body=False
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status == 200
    assert answer.complete and answer.size == size
    assert peak < 3 * 1024 * 1024, f"peak {peak} bytes while relaying {size}"


async def test_a_call_the_token_rule_refuses_is_recorded_as_denied(
    app: Running, upstream: Upstream, owner: asyncpg.Connection, mint: Callable[..., str]
) -> None:
    response = await app.http.get(
        "/remote/other/whoami", headers={"Authorization": f"Bearer {mint(sub='auth0|b-1')}"}
    )
    assert response.status_code == 403
    (event,) = await forwarded(owner)
    assert (event["outcome"], event["actor"]) == ("denied", "auth0|b-1")
    assert upstream.seen == []
