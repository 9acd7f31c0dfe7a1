"""Forwarding done right: what leaves for the upstream, what comes back, and what never
does, against a real upstream server on a loopback port."""

from __future__ import annotations

import pytest

from devkit.upstream import Upstream
from tests.remote.support import Running, raw_call


async def test_a_call_is_forwarded_with_its_query_and_body(
    app: Running, upstream: Upstream
) -> None:
    response = await app.http.post(
        "/remote/echo/items/7", params={"q": "a b"}, content=b"hello", headers={"X-Thing": "1"}
    )
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["raw_path"] == "/echo/items/7"
    assert seen["query"] == "q=a+b"
    assert seen["body_bytes"] == 5
    assert seen["headers"]["x-thing"] == "1"
    assert len(upstream.seen) == 1


async def test_what_never_leaves_and_what_we_set(app: Running, upstream: Upstream) -> None:
    response = await app.http.get(
        "/remote/echo/x",
        headers={
            "Cookie": "other=1",
            "X-CSRF": "1",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Host": "evil.example",
            "Forwarded": "for=203.0.113.9",
            "Connection": "x-secret",
            "X-Secret": "named by Connection",
            "Proxy-Authorization": "Basic abc",
            "X-Request-ID": "req-123",
        },
    )
    assert response.status_code == 200, response.text
    sent = response.json()["headers"]
    for name in ("cookie", "x-csrf", "forwarded", "x-secret", "proxy-authorization"):
        assert name not in sent
    assert sent["x-forwarded-for"] == "127.0.0.1"  # the peer as this service sees it
    assert sent["x-forwarded-host"] == "app.test"  # from PUBLIC_URL, not the client
    assert sent["x-forwarded-proto"] == "https"
    assert sent["x-forwarded-prefix"] == "/remote/echo"
    assert sent["x-request-id"] == "req-123"
    assert sent["host"] == upstream.url.removeprefix("http://")


async def test_the_upstreams_cookies_hsts_cors_and_csp_are_dropped(app: Running) -> None:
    response = await app.http.get("/remote/echo/x")
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert response.headers["strict-transport-security"].startswith("max-age=31536000")  # ours
    assert "access-control-allow-origin" not in response.headers
    assert "x-hop" not in response.headers
    # Our own policy, not the upstream's `default-src *`.
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers["x-upstream"] == "echo"
    assert "server" not in response.headers  # the upstream's software is not ours to show


async def test_a_redirect_is_passed_back_not_followed(app: Running, upstream: Upstream) -> None:
    response = await app.http.get("/remote/plain/redirect")
    assert response.status_code == 302
    assert response.headers["location"] == "https://elsewhere.example/x"
    assert len(upstream.seen) == 1


@pytest.mark.parametrize("status", [404, 500, 503])
async def test_an_upstream_error_status_is_passed_back(
    app: Running, upstream: Upstream, status: int
) -> None:
    response = await app.http.get(f"/remote/plain/status/{status}")
    assert response.status_code == status
    assert len(upstream.seen) == 1


async def test_a_timeout_is_a_504_problem(app: Running, upstream: Upstream) -> None:
    response = await app.http.get("/remote/slow/slow/3000")
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/upstream-timeout")
    assert "slow" in response.json()["detail"]


async def test_an_unreachable_upstream_is_a_502_problem(app: Running) -> None:
    response = await app.http.get("/remote/down/x")
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "the remote API down could not be reached"


async def test_an_answer_declared_past_the_cap_is_a_502(app: Running) -> None:
    response = await app.http.get("/remote/small/bytes/5000", params={"sized": "1"})
    assert response.status_code == 502
    assert response.json()["detail"] == "the remote API small answered more than its limit"


async def test_an_answer_streaming_past_the_cap_is_cut(app: Running) -> None:
    answer = await raw_call(app.asgi, "GET", b"/remote/small/bytes/200000", keep_body=False)
    assert answer.status == 200  # the status line had gone out: the body is cut short
    assert not answer.complete
    assert answer.size <= 1000


async def test_a_body_declared_past_the_cap_is_refused_before_sending(
    app: Running, upstream: Upstream
) -> None:
    response = await app.http.post("/remote/echo/x", content=b"x" * 1001)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert upstream.seen == []


async def test_a_streamed_body_past_the_cap_is_refused(app: Running, upstream: Upstream) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(5):
            yield b"x" * 300

    response = await app.http.post("/remote/echo/x", content=chunks())
    assert response.status_code == 413
    assert response.json()["detail"] == "the body exceeds this remote API's limit of 1000 bytes"


async def test_an_unknown_route_and_a_method_not_declared(app: Running, upstream: Upstream) -> None:
    unknown = await app.http.get("/remote/nope/x")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    not_declared = await app.http.post("/remote/plain/echo/x")
    assert not_declared.status_code == 405
    assert not_declared.headers["allow"] == "GET"
    assert upstream.seen == []


async def test_the_route_rate_limit(app: Running, upstream: Upstream) -> None:
    statuses = [(await app.http.get("/remote/limited/status/204")).status_code for _ in range(3)]
    assert statuses == [204, 204, 429]
    assert len(upstream.seen) == 2


async def test_metrics_count_calls_by_route_and_status(app: Running) -> None:
    await app.http.get("/remote/plain/status/204")
    await app.http.get("/remote/down/x")
    text = (await app.http.get("/metrics")).text
    assert 'remote_calls_total{route="plain",status="204"}' in text
    assert 'remote_calls_total{route="down",status="502"}' in text
    assert 'remote_upstream_seconds_count{route="plain"}' in text


async def test_a_small_answer_comes_whole_with_its_length(app: Running) -> None:
    answer = await raw_call(app.asgi, "GET", b"/remote/plain/bytes/3000?sized=1")
    assert answer.status == 200
    assert answer.complete
    assert answer.headers["content-length"] == "3000"
    assert answer.body == b"x" * 3000
    assert answer.body_messages == 1  # read whole, sent in one piece


async def test_a_large_answer_is_streamed_in_pieces(app: Running) -> None:
    answer = await raw_call(app.asgi, "GET", b"/remote/big/bytes/300000?sized=1", keep_body=False)
    assert answer.status == 200
    assert answer.complete
    assert answer.size == 300000
    assert answer.body_messages > 1
