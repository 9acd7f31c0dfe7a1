"""The session's access token is refreshed shortly before it expires, once across every copy;
a tenant that is down keeps the session (503), a refused refresh token ends it (401)."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.core.settings import Settings
from app.session.crypto import TokenBox
from tests.fixtures.app import running_app
from tests.fixtures.standin import SESSION_CLIENT_ID, SESSION_CLIENT_SECRET, StandIn
from tests.fixtures.tenant import TENANT_URL
from tests.helpers import assert_problem, audit_rows
from tests.session.support import (
    ENCRYPTION_KEY,
    cleared,
    login,
    make_due,
    session_rows,
    with_cookie,
)

BOX = TokenBox(ENCRYPTION_KEY)


async def test_a_token_about_to_expire_is_refreshed_with_the_rotating_refresh_token(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    cookie = await login(app)
    [before] = await session_rows(owner)
    await make_due(owner, 10)

    response = await app.get("/api/patients", headers=with_cookie(cookie))
    assert response.status_code == 200, response.text
    assert standin.state.counts["refresh_grant"] == 1
    [after] = await session_rows(owner)
    assert after["refreshed_at"] is not None
    assert after["access_expires_at"] > before["access_expires_at"]
    assert BOX.open(after["access_token"]) != BOX.open(before["access_token"])
    assert BOX.open(after["refresh_token"]) != BOX.open(before["refresh_token"])  # rotated

    again = await app.get("/api/patients", headers=with_cookie(cookie))
    assert again.status_code == 200
    assert standin.state.counts["refresh_grant"] == 1  # fresh now: no second grant


async def test_a_token_not_yet_due_is_not_refreshed(
    app: httpx.AsyncClient, standin: StandIn
) -> None:
    cookie = await login(app)
    for _ in range(3):
        assert (await app.get("/api/patients", headers=with_cookie(cookie))).status_code == 200
    assert standin.state.counts["refresh_grant"] == 0


async def test_tenant_down_while_a_refresh_is_due_is_503_and_the_session_is_kept(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    cookie = await login(app)
    await make_due(owner, 10)
    route = standin.router.routes["standin"]
    working = route.side_effect
    route.side_effect = httpx.ConnectError("down")

    response = await app.get("/api/patients", headers=with_cookie(cookie))
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"
    assert not cleared(response)
    assert len(await session_rows(owner)) == 1
    [failed] = await audit_rows(owner, "session.refresh_failed")
    assert (failed["outcome"], failed["actor"]) == ("failed", "auth0|alice")

    route.side_effect = working  # the tenant is back: the same cookie works
    assert (await app.get("/api/patients", headers=with_cookie(cookie))).status_code == 200


async def test_a_reused_refresh_token_ends_the_session(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    cookie = await login(app)
    [row] = await session_rows(owner)
    # Someone else uses the session's refresh token first: ours is now a reused one.
    async with httpx.AsyncClient() as thief:
        stolen = await thief.post(
            f"{TENANT_URL}/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": BOX.open(row["refresh_token"]),
                "client_id": SESSION_CLIENT_ID,
                "client_secret": SESSION_CLIENT_SECRET,
            },
        )
    assert stolen.status_code == 200
    await make_due(owner, 10)

    response = await app.get("/api/patients", headers=with_cookie(cookie))
    assert_problem(response, 401, detail="the session has ended; sign in again")
    assert cleared(response)
    assert await session_rows(owner) == []
    events = [(r["action"], r["outcome"]) for r in await audit_rows(owner, "session.")]
    assert events[-2:] == [("session.refresh_failed", "failed"), ("session.ended", "success")]
    [ended] = await owner.fetch(
        "SELECT detail->>'reason' AS reason FROM audit_events WHERE action = 'session.ended'"
    )
    assert ended["reason"] == "refresh_refused"
    assert standin.state.counts["refresh_reuse"] == 1


async def test_ten_racing_requests_over_two_workers_cause_one_refresh(
    settings: Settings, owner: asyncpg.Connection, standin: StandIn
) -> None:
    async with running_app(settings) as one, running_app(settings) as two:
        cookie = await login(one)
        await make_due(owner, 10)
        workers = [one, two] * 5
        responses = await asyncio.gather(
            *(worker.get("/api/patients", headers=with_cookie(cookie)) for worker in workers)
        )
    assert [r.status_code for r in responses] == [200] * 10
    assert standin.state.counts["refresh_grant"] == 1
    [row] = await session_rows(owner)
    assert row["refreshed_at"] is not None


async def test_a_rate_limited_refresh_is_503_and_the_session_is_kept(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    cookie = await login(app)
    await make_due(owner, 10)
    standin.router.routes["standin"].side_effect = lambda request: httpx.Response(
        429, json={"error": "too_many_requests", "error_description": "Slow down"}
    )
    response = await app.get("/api/patients", headers=with_cookie(cookie))
    assert_problem(response, 503)
    assert "retry-after" in response.headers
    assert len(await session_rows(owner)) == 1


async def test_a_refused_client_is_502_and_keeps_every_session(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    cookie = await login(app)
    await make_due(owner, 10)
    standin.state.session_client_secret = "rotated-at-the-tenant"  # ours is now wrong
    response = await app.get("/api/patients", headers=with_cookie(cookie))
    assert_problem(response, 502)
    assert not cleared(response)
    assert len(await session_rows(owner)) == 1
    [failed] = await audit_rows(owner, "session.refresh_failed")
    assert failed["outcome"] == "failed"


async def test_every_refresh_is_counted_by_outcome_on_metrics(
    app: httpx.AsyncClient, owner: asyncpg.Connection, standin: StandIn
) -> None:
    """`session_refreshes_total`: what the "session refreshes failing" alert reads
    (deploy/alerts.yml)."""

    async def counts() -> dict[str, float]:
        text = (await app.get("/metrics")).text
        return {outcome: value(text, outcome) for outcome in ("ok", "failed", "ended")}

    cookie = await login(app)
    before = await counts()
    await make_due(owner, 10)
    route = standin.router.routes["standin"]
    working = route.side_effect
    route.side_effect = httpx.ConnectError("down")
    assert_problem(await app.get("/api/patients", headers=with_cookie(cookie)), 503)
    route.side_effect = working
    assert (await app.get("/api/patients", headers=with_cookie(cookie))).status_code == 200

    cookie = await login(app)  # a second session, not yet read (so not cached)
    row = next(r for r in await session_rows(owner) if r["refreshed_at"] is None)
    async with httpx.AsyncClient() as thief:  # its refresh token used elsewhere first
        stolen = await thief.post(
            f"{TENANT_URL}/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": BOX.open(row["refresh_token"]),
                "client_id": SESSION_CLIENT_ID,
                "client_secret": SESSION_CLIENT_SECRET,
            },
        )
    assert stolen.status_code == 200
    await make_due(owner, 10)
    assert_problem(await app.get("/api/patients", headers=with_cookie(cookie)), 401)

    after = await counts()
    assert {k: after[k] - before[k] for k in after} == {"ok": 1, "failed": 1, "ended": 1}


def value(exposition: str, outcome: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "session_refreshes_total" and sample.labels == {"outcome": outcome}:
                return sample.value
    return 0.0
