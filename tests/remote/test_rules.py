"""The token rules: each rule for a bearer caller, a cookie session and an anonymous caller,
checked by what a real upstream received (it reports the token's hash and claims, never
the token), and refusals that send nothing upstream."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from devkit.upstream import Upstream
from tests.fixtures.standin import SESSION_CLIENT_ID
from tests.fixtures.tenant import AUDIENCE
from tests.remote.support import Running, sha256
from tests.session.support import login, with_cookie

# What the upstream gets, by route and caller: "none" (no token), "own" (the bearer
# caller's token), "session" (the session's token), "client" (the service's client
# token), or the status of a refusal.
MATRIX: dict[str, dict[str, str | int]] = {
    "plain": {"bearer": "none", "cookie": "none", "anonymous": "none"},
    "user": {"bearer": "own", "cookie": "session", "anonymous": 401},
    "other": {"bearer": 403, "cookie": "exchanged", "anonymous": 401},
    "client": {"bearer": "client", "cookie": "client", "anonymous": 401},
    "uoc": {"bearer": "client", "cookie": "exchanged", "anonymous": 401},
    "uoc_own": {"bearer": "own", "cookie": "session", "anonymous": 401},
    "uon": {"bearer": "own", "cookie": "session", "anonymous": "none"},
}
CASES = [(route, mode) for route, modes in MATRIX.items() for mode in modes]


@pytest.mark.parametrize(("route", "mode"), CASES, ids=[f"{r}-{m}" for r, m in CASES])
async def test_token_rule_matrix(
    app: Running, upstream: Upstream, mint: Callable[..., str], route: str, mode: str
) -> None:
    expected = MATRIX[route][mode]
    headers: dict[str, str] = {}
    bearer = mint()
    if mode == "bearer":
        headers = {"Authorization": f"Bearer {bearer}"}
    elif mode == "cookie":
        headers = with_cookie(await login(app.http))
    response = await app.http.get(f"/remote/{route}/whoami", headers=headers)
    if isinstance(expected, int):
        assert response.status_code == expected, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert upstream.seen == []
        return
    assert response.status_code == 200, response.text
    seen = response.json()
    assert len(upstream.seen) == 1
    if expected == "none":
        assert seen == {"caller": "anonymous"}
        return
    (received,) = upstream.tokens()
    assert received not in response.text  # the browser never sees a token
    assert seen["token_sha256"] == sha256(received)
    if expected == "own":
        assert received == bearer
    elif expected == "session":
        assert seen["scheme"] == "Bearer"
        assert AUDIENCE in seen["claims"]["aud"]
        assert seen["claims"]["azp"] == SESSION_CLIENT_ID
    elif expected == "client":
        assert received in app.standin.state.m2m_tokens
    elif expected == "exchanged":
        assert "https://labs.test.local" in seen["claims"]["aud"]
        assert seen["claims"]["azp"] == SESSION_CLIENT_ID


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_client_token_is_fetched_once(app: Running, upstream: Upstream) -> None:
    cookie = with_cookie(await login(app.http))
    management = _sample("m2m_token_fetches_total", outcome="ok")
    grants = _sample("remote_token_grants_total", kind="client", outcome="ok")
    for _ in range(3):
        assert (await app.http.get("/remote/client/whoami", headers=cookie)).status_code == 200
    assert len(set(upstream.tokens())) == 1
    assert len(app.standin.state.m2m_tokens) == 1
    # Counted as a remote API's grant, not as a Management API token (whose alert it is).
    assert _sample("remote_token_grants_total", kind="client", outcome="ok") == grants + 1
    assert _sample("m2m_token_fetches_total", outcome="ok") == management


async def test_a_cookie_without_x_csrf_is_refused(app: Running, upstream: Upstream) -> None:
    cookie = with_cookie(await login(app.http), csrf=False)
    for route in ("user", "plain"):
        response = await app.http.get(f"/remote/{route}/whoami", headers=cookie)
        assert response.status_code == 403
        assert response.json()["detail"] == (
            "a request with the session cookie must send the header X-CSRF: 1"
        )
    assert upstream.seen == []


async def test_a_bad_token_is_refused_even_on_an_open_route(
    app: Running, upstream: Upstream
) -> None:
    response = await app.http.get(
        "/remote/plain/whoami", headers={"Authorization": "Bearer not-a-token"}
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert upstream.seen == []


async def test_the_route_permission(
    app: Running, upstream: Upstream, mint: Callable[..., str]
) -> None:
    without = await app.http.get(
        "/remote/perm/whoami", headers={"Authorization": f"Bearer {mint()}"}
    )
    assert without.status_code == 403
    assert upstream.seen == []
    allowed = mint(permissions=["read:labs"])
    response = await app.http.get(
        "/remote/perm/whoami", headers={"Authorization": f"Bearer {allowed}"}
    )
    assert response.status_code == 200
    assert upstream.tokens() == [allowed]


async def test_a_dpop_bound_bearer_token_is_not_forwarded(
    app: Running, upstream: Upstream, mint: Callable[..., str]
) -> None:
    bound = mint(cnf={"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"})
    response = await app.http.get(
        "/remote/user/whoami", headers={"Authorization": f"Bearer {bound}"}
    )
    # The verifier refuses a bound token sent as Bearer before any rule is looked at.
    assert response.status_code in (401, 403)
    assert upstream.seen == []


async def test_a_refused_client_grant_is_a_502_and_nothing_is_sent(
    app: Running, upstream: Upstream, mint: Callable[..., str]
) -> None:
    app.standin.state.client_secret = "not-ours"  # the tenant no longer knows our secret
    response = await app.http.get(
        "/remote/client/whoami", headers={"Authorization": f"Bearer {mint()}"}
    )
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "the identity provider refused a token for the remote API"
    assert upstream.seen == []
