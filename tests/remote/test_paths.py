"""A path that could leave its route is refused with 400, and nothing is sent upstream.

Sent as raw bytes straight into the ASGI app: an HTTP client would normalise most of them
away before they reached us, and a hostile one would not."""

from __future__ import annotations

import orjson
import pytest

from devkit.upstream import Upstream
from tests.remote.support import Running, raw_call

ESCAPES = [
    b"/remote/plain/../x",
    b"/remote/plain/a/../../x",
    b"/remote/plain/./x",
    b"/remote/plain/%2e%2e/x",
    b"/remote/plain/%2E%2E/x",
    b"/remote/plain/.%2e/x",
    b"/remote/plain/%2e./x",
    b"/remote/plain/a%2fb",
    b"/remote/plain/a%2F..%2Fb",
    b"/remote/plain/%252e%252e/x",
    b"/remote/plain/a%252fb",
    b"/remote/plain//evil.example/x",
    b"/remote/plain/a//b",
    b"/remote/plain/a\\b",
    b"/remote/plain/..\\x",
    b"/remote/plain/a%5cb",
    b"/remote/plain/a%00b",
    b"/remote/plain/user@evil.example/x",
    b"/remote/plain/user:pass@evil.example/x",
    b"/remote/plain/evil.example:443/x",
    b"/remote/plain/http:%2f%2fevil.example/x",
    b"/remote/plain/https://evil.example/x",
]


@pytest.mark.parametrize("raw", ESCAPES, ids=[e.decode() for e in ESCAPES])
async def test_an_escaping_path_is_refused(app: Running, upstream: Upstream, raw: bytes) -> None:
    answer = await raw_call(app.asgi, "GET", raw)
    assert answer.status == 400, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    problem = orjson.loads(answer.body)
    assert problem["detail"].startswith("refused: the path")
    assert upstream.seen == []


async def test_an_ordinary_encoded_path_is_forwarded_as_sent(
    app: Running, upstream: Upstream
) -> None:
    answer = await raw_call(app.asgi, "GET", b"/remote/echo/a%20b/c.d/%7Etilde")
    assert answer.status == 200, answer.body
    assert orjson.loads(answer.body)["raw_path"] == "/echo/a%20b/c.d/%7Etilde"
