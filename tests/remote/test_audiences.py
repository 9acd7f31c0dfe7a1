"""A session's token for another API: got once with the session's refresh token, kept and
reused, got once across copies when ten requests race for it, renewed once when the
upstream refuses it; and the session's own refresh still works after its refresh token was
rotated by such a grant."""

from __future__ import annotations

import asyncio

import asyncpg

from app.core.settings import Settings
from devkit.upstream import Upstream
from tests.remote.support import Running, running
from tests.session.support import login, make_due, with_cookie


async def test_an_audience_switch_fetches_one_token_and_reuses_it(
    app: Running, upstream: Upstream, owner: asyncpg.Connection
) -> None:
    cookie = with_cookie(await login(app.http))
    for _ in range(3):
        response = await app.http.get("/remote/other/whoami", headers=cookie)
        assert response.status_code == 200
        assert response.json()["claims"]["aud"][0] == "https://labs.test.local"
    assert app.standin.state.counts["audience_grant"] == 1
    assert len(set(upstream.tokens())) == 1
    stored = await owner.fetch("SELECT audience, access_token FROM session_audience_tokens")
    assert [row["audience"] for row in stored] == ["https://labs.test.local"]
    assert upstream.tokens()[0].encode() not in bytes(stored[0]["access_token"])  # sealed


async def test_ten_requests_over_two_copies_cause_one_grant(
    settings: Settings, app: Running, upstream: Upstream
) -> None:
    cookie = with_cookie(await login(app.http))
    async with running(settings, app.standin) as other:
        calls = [
            copy.http.get("/remote/other/whoami", headers=cookie)
            for copy in (app, other)
            for _ in range(5)
        ]
        answers = await asyncio.gather(*calls)
    assert [a.status_code for a in answers] == [200] * 10
    assert app.standin.state.counts["audience_grant"] == 1
    assert len(set(upstream.tokens())) == 1


async def test_the_sessions_own_refresh_works_after_an_audience_grant(
    app: Running, owner: asyncpg.Connection
) -> None:
    cookie = with_cookie(await login(app.http))
    assert (await app.http.get("/remote/other/whoami", headers=cookie)).status_code == 200
    await make_due(owner)
    assert (await app.http.get("/auth/session", headers=cookie)).status_code == 200
    assert app.standin.state.counts["refresh_reuse"] == 0
    assert (await app.http.get("/remote/other/whoami", headers=cookie)).status_code == 200


async def test_an_upstream_401_gets_one_new_token_and_one_retry(
    app: Running, upstream: Upstream
) -> None:
    cookie = with_cookie(await login(app.http))
    response = await app.http.get("/remote/other/status/401", headers=cookie)
    assert response.status_code == 401  # refused twice: the second answer is passed back
    first, second = upstream.tokens()
    assert first != second
    assert app.standin.state.counts["audience_grant"] == 2


async def test_a_client_token_refused_is_renewed_once(app: Running, upstream: Upstream) -> None:
    cookie = with_cookie(await login(app.http))
    response = await app.http.get("/remote/client/status/401", headers=cookie)
    assert response.status_code == 401
    first, second = upstream.tokens()
    assert first != second


async def test_a_call_with_a_body_is_not_retried(app: Running, upstream: Upstream) -> None:
    cookie = with_cookie(await login(app.http))
    response = await app.http.post("/remote/client_rw/status/401", headers=cookie, content=b"{}")
    assert response.status_code == 401
    assert len(upstream.seen) == 1


async def test_an_api_the_tenant_does_not_know_is_a_502(
    app: Running, upstream: Upstream, owner: asyncpg.Connection
) -> None:
    app.standin.state.other_audiences.clear()
    cookie = with_cookie(await login(app.http))
    response = await app.http.get("/remote/other/whoami", headers=cookie)
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "the identity provider refused a token for the API"
    assert upstream.seen == []
    assert await owner.fetch("SELECT 1 FROM session_audience_tokens") == []


async def test_a_sessions_tokens_end_with_it(app: Running, owner: asyncpg.Connection) -> None:
    cookie = with_cookie(await login(app.http))
    assert (await app.http.get("/remote/other/whoami", headers=cookie)).status_code == 200
    assert (await app.http.post("/auth/logout", headers=cookie)).status_code in (200, 204)
    assert await owner.fetch("SELECT 1 FROM session_audience_tokens") == []
