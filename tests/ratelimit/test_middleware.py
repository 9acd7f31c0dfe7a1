"""The per-address middleware and the per-user check (app/ratelimit/middleware.py) in an app
wired as the service wires them, and the key of a client address."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.http import problems
from app.ratelimit import ClientRateLimitMiddleware, GlobalRateLimiter, Limit, Quota, client_key
from tests.helpers import assert_problem
from tests.ratelimit.support import WINDOW, FakeClock


class TestHttp:
    @staticmethod
    def app(per_ip: Limit, per_user: Limit) -> Starlette:
        """Wired as the service wires it: the per-IP middleware, the per-user check after
        the token (here: a header) is verified."""

        async def endpoint(request: Request) -> Response:
            per_user.enforce(request.headers["x-user"])
            return JSONResponse({"ok": True})

        return Starlette(
            routes=[Route("/", endpoint)],
            middleware=[Middleware(ClientRateLimitMiddleware, limit=per_ip)],
            exception_handlers=problems.EXCEPTION_HANDLERS,
        )

    @staticmethod
    def client(app: Starlette, ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 4711))
        return httpx.AsyncClient(transport=transport, base_url="http://t")

    def assert_429(self, response: httpx.Response, detail: str) -> None:
        body = assert_problem(response, 429, request_id=False)
        assert int(response.headers["retry-after"]) >= 1
        assert body["type"].endswith("/rate-limited")
        assert detail in body["detail"]

    async def test_per_ip_refusal(self) -> None:
        limiter = GlobalRateLimiter(clock=FakeClock())
        app = self.app(limiter.limit("ip", Quota(2, WINDOW)), limiter.limit("user", Quota(9, 60)))
        async with self.client(app, "203.0.113.7") as http:
            ok = [(await http.get("/", headers={"x-user": "u1"})).status_code for _ in range(2)]
            refused = await http.get("/", headers={"x-user": "u2"})
        assert ok == [200, 200]
        self.assert_429(refused, "this address")
        assert refused.headers["retry-after"] == "90"  # half of the 2 slid out of the next window
        async with self.client(app, "203.0.113.8") as http:
            assert (await http.get("/", headers={"x-user": "u3"})).status_code == 200

    async def test_per_user_refusal(self) -> None:
        limiter = GlobalRateLimiter(clock=FakeClock())
        app = self.app(limiter.limit("ip", Quota(99, WINDOW)), limiter.limit("user", Quota(2, 60)))
        statuses = []
        for ip in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
            async with self.client(app, ip) as http:
                statuses.append((await http.get("/", headers={"x-user": "auth0|ada"})).status_code)
        assert statuses == [200, 200, 429]
        async with self.client(app, "203.0.113.4") as http:
            self.assert_429(await http.get("/", headers={"x-user": "auth0|ada"}), "try again")
            assert (await http.get("/", headers={"x-user": "auth0|bob"})).status_code == 200

    @pytest.mark.parametrize(
        ("host", "key"),
        [
            ("203.0.113.7", "203.0.113.7"),
            ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
            ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("not-an-ip", "not-an-ip"),
        ],
    )
    def test_client_key(self, host: str, key: str) -> None:
        assert client_key(host) == key
