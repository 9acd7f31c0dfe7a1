"""Route permissions through HTTP: `requires(...)` on a tiny Starlette app, and the backend.

The app here is built for the test: a few routes, a middleware that puts the verifier (and a
denial recorder) in the app's state as the auth runtime, and the app's error handlers. No
database and no lifespan; the JWKS is stubbed with respx.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.requires import (
    AuthRequirement,
    auth_requirement,
    check_requirement,
    principal,
    requires,
)
from app.auth.runtime import AuthRuntime
from app.auth.tokens import Principal, TokenVerifier
from app.core.errors import AppError, EmailNotVerified, StepUpRequired
from app.core.settings import Settings
from app.http.problems import EXCEPTION_HANDLERS
from devkit.keys import SigningKey, TokenMinter
from tests.helpers import assert_problem, bearer

DOMAIN = "tenant.example.com"
AUDIENCE = "https://api.example.com"
JWKS_URL = "http://tenant.test/.well-known/jwks.json"
BARE_CHALLENGE = 'Bearer realm="api"'


@dataclass
class Denial:
    path: str
    sub: str | None
    status: int
    detail: str


@dataclass
class Ctx:
    """What the test gives `requires` (as an `AuthRuntime`), and the denials it reported."""

    verifier: Any
    settings: Any = None
    denials: list[Denial] = field(default_factory=list)

    async def on_denied(self, request: Request, who: Principal | None, error: AppError) -> None:
        self.denials.append(
            Denial(request.url.path, who.sub if who else None, error.status, error.detail)
        )


class InjectContext:
    """What the real lifespan does for `request.state.auth`, without one."""

    def __init__(self, app: ASGIApp, ctx: Ctx) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = self.ctx.settings.auth if self.ctx.settings is not None else None
        auth = AuthRuntime(self.ctx.verifier, policy=policy, on_denied=self.ctx.on_denied)
        scope.setdefault("state", {})["auth"] = auth
        await self.app(scope, receive, send)


async def who_am_i(request: Request) -> Response:
    caller = principal(request)
    return JSONResponse({"sub": caller.sub, "permissions": sorted(caller.permissions)})


async def public(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def make_app(ctx: Ctx, *extra: Middleware) -> Starlette:
    return Starlette(
        routes=[
            Route("/public", public),
            Route("/me", requires()(who_am_i)),
            Route("/patients", requires("read:patients")(who_am_i)),
            Route("/admin", requires("read:patients", "read:users")(who_am_i)),
            Route("/verified", requires(verified_email=True)(who_am_i)),
            Route("/step-up", requires(mfa=True)(who_am_i)),
        ],
        middleware=[Middleware(InjectContext, ctx=ctx), *extra],
        exception_handlers=EXCEPTION_HANDLERS,
    )


def settings() -> Settings:
    return Settings(
        database_url="postgresql://x@127.0.0.1/db",
        auth0_domain=DOMAIN,
        auth0_audience=AUDIENCE,
        auth0_client_id="cid",
        auth0_client_secret="secret",
        app_secret_key="0123456789abcdef0123456789abcdef-test",
        auth0_base_url="http://tenant.test",
        _env_file=None,
    )


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.generate(kid="auth-test-key")


@pytest.fixture
def minter(signing_key: SigningKey) -> TokenMinter:
    return TokenMinter(DOMAIN, AUDIENCE, keys=[signing_key])


@pytest.fixture
def jwks(minter: TokenMinter) -> Iterator[respx.Route]:
    with respx.mock(assert_all_mocked=False, assert_all_called=False) as router:
        router.route(host="testserver").pass_through()
        yield router.get(JWKS_URL).mock(
            side_effect=lambda request: httpx.Response(200, json=minter.jwks())
        )


@pytest.fixture
async def ctx(jwks: respx.Route) -> AsyncIterator[Ctx]:
    async with httpx.AsyncClient() as http:
        config = settings()
        yield Ctx(TokenVerifier(config, http), config)


@pytest.fixture
async def client(ctx: Ctx) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


class TestRequires:
    async def test_anonymous_gets_a_bare_challenge(
        self, client: httpx.AsyncClient, ctx: Ctx, jwks: respx.Route
    ) -> None:
        response = await client.get("/patients")

        assert_problem(response, 401, request_id=False)
        assert response.headers["www-authenticate"] == BARE_CHALLENGE
        assert ctx.denials == [Denial("/patients", None, 401, "a valid access token is required")]
        assert jwks.call_count == 0

    @pytest.mark.parametrize(
        ("authorization", "description"),
        [
            ("Basic dXNlcjpwYXNzd29yZA==", "the Authorization scheme must be Bearer"),
            ("Token abc.def.ghi", "the Authorization scheme must be Bearer"),
            ("Bearer", "the bearer token is empty"),
            ("Bearer    ", "the bearer token is empty"),
            ("Bearer not-a-jwt", "malformed token"),
            ("Bearer a.b.c.d.e", "malformed token"),
        ],
    )
    async def test_bad_authorization_header(
        self, authorization: str, description: str, client: httpx.AsyncClient, ctx: Ctx
    ) -> None:
        response = await client.get("/me", headers={"Authorization": authorization})

        body = assert_problem(response, 401, request_id=False)
        assert body["detail"] == description
        assert response.headers["www-authenticate"] == (
            f'Bearer realm="api", error="invalid_token", error_description="{description}"'
        )
        assert [d.status for d in ctx.denials] == [401]

    async def test_two_authorization_headers(
        self, client: httpx.AsyncClient, minter: TokenMinter
    ) -> None:
        token = minter.mint()
        response = await client.get(
            "/me", headers=[("Authorization", f"Bearer {token}"), ("Authorization", "Bearer x")]
        )

        body = assert_problem(response, 401, request_id=False)
        assert body["detail"] == "send exactly one Authorization header"
        assert 'error="invalid_token"' in response.headers["www-authenticate"]

    async def test_expired_token_is_told_apart(
        self, client: httpx.AsyncClient, minter: TokenMinter, ctx: Ctx
    ) -> None:
        token = minter.mint(exp=int(time.time()) - 3600)

        response = await client.get("/me", headers=bearer(token))

        assert assert_problem(response, 401, request_id=False)["detail"] == "token expired"
        assert 'error_description="token expired"' in response.headers["www-authenticate"]
        assert ctx.denials == [Denial("/me", None, 401, "token expired")]

    async def test_missing_permission(
        self, client: httpx.AsyncClient, minter: TokenMinter, ctx: Ctx
    ) -> None:
        token = minter.mint("auth0|reader", permissions=["read:audit_events"])

        response = await client.get("/patients", headers=bearer(token))

        assert_problem(response, 403, request_id=False)
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and 'scope="read:patients"' in challenge
        assert ctx.denials == [
            Denial(
                "/patients", "auth0|reader", 403, "this request needs the permission read:patients"
            )
        ]

    async def test_every_listed_permission_is_needed(
        self, client: httpx.AsyncClient, minter: TokenMinter
    ) -> None:
        partial = minter.mint(permissions=["read:patients"])
        full = minter.mint(permissions=["read:patients", "read:users"])

        response = await client.get("/admin", headers=bearer(partial))
        assert_problem(response, 403, request_id=False)
        assert 'scope="read:patients read:users"' in response.headers["www-authenticate"]
        assert (await client.get("/admin", headers=bearer(full))).status_code == 200

    async def test_permission_from_scope_for_a_client_credentials_token(
        self, client: httpx.AsyncClient, minter: TokenMinter
    ) -> None:
        claims = minter.claims(scope="openid read:patients", gty="client-credentials")
        del claims["permissions"]

        response = await client.get("/patients", headers=bearer(minter.current.sign(claims)))

        assert response.status_code == 200
        assert response.json()["permissions"] == ["openid", "read:patients"]

    @pytest.mark.parametrize(
        ("claim", "detail"),
        [
            (False, "verify your email address to use this feature"),
            (None, "the access token does not say the email address is verified"),
        ],
    )
    async def test_email_not_verified(
        self, claim: bool | None, detail: str, client: httpx.AsyncClient, minter: TokenMinter
    ) -> None:
        response = await client.get("/verified", headers=bearer(minter.mint(email_verified=claim)))

        body = assert_problem(response, 403, request_id=False)
        assert body["type"].endswith("/email-not-verified")
        assert body["detail"] == detail

    async def test_email_verified(self, client: httpx.AsyncClient, minter: TokenMinter) -> None:
        response = await client.get("/verified", headers=bearer(minter.mint(email_verified=True)))
        assert response.status_code == 200

    async def test_step_up_needed_without_mfa(
        self, client: httpx.AsyncClient, minter: TokenMinter
    ) -> None:
        response = await client.get("/step-up", headers=bearer(minter.mint(amr=["pwd"])))

        assert_problem(response, 403, request_id=False)
        assert 'error="insufficient_user_authentication"' in response.headers["www-authenticate"]
        no_amr = await client.get("/step-up", headers=bearer(minter.mint()))
        assert no_amr.status_code == 403

    async def test_step_up_done(self, client: httpx.AsyncClient, minter: TokenMinter) -> None:
        response = await client.get("/step-up", headers=bearer(minter.mint(amr=["pwd", "mfa"])))
        assert response.status_code == 200

    async def test_ok(self, client: httpx.AsyncClient, minter: TokenMinter, ctx: Ctx) -> None:
        token = minter.mint("auth0|alice", permissions=["read:patients"])

        response = await client.get("/patients", headers=bearer(token))

        assert response.status_code == 200
        assert response.json() == {"sub": "auth0|alice", "permissions": ["read:patients"]}
        assert ctx.denials == []

    async def test_responses_never_contain_the_token(
        self, client: httpx.AsyncClient, minter: TokenMinter
    ) -> None:
        tokens = [
            minter.mint(exp=int(time.time()) - 3600),
            minter.mint(permissions=[]),
            minter.mint(aud="https://elsewhere.example.com"),
            minter.mint()[:-5] + "AAAAA",
            minter.mint() + ".extra",
        ]
        for token in tokens:
            for path in ("/me", "/patients", "/step-up", "/verified"):
                response = await client.get(path, headers=bearer(token))
                assert response.status_code in (200, 401, 403)
                assert token not in response.text
                assert all(token not in value for value in response.headers.values())
                assert token.split(".")[1] not in response.text

    async def test_tenant_down_with_no_keys_is_503_not_a_denial(
        self, client: httpx.AsyncClient, minter: TokenMinter, ctx: Ctx, jwks: respx.Route
    ) -> None:
        jwks.side_effect = httpx.ConnectError("connection refused")

        response = await client.get("/me", headers=bearer(minter.mint()))

        assert_problem(response, 503, request_id=False)
        assert int(response.headers["retry-after"]) >= 1
        assert ctx.denials == []

    async def test_a_failing_denial_hook_does_not_change_the_answer(
        self, client: httpx.AsyncClient, ctx: Ctx, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def broken(request: Request, who: Principal | None, error: AppError) -> None:
            raise RuntimeError("audit database down")

        ctx.on_denied = broken  # type: ignore[method-assign]

        response = await client.get("/me")

        assert response.status_code == 401
        assert "recording a denied request failed" in caplog.text


class TestPublicRoutes:
    async def test_public_route_never_touches_the_verifier(self) -> None:
        class Exploding:
            async def verify_access_token(self, token: str) -> Principal:
                raise AssertionError("a public route called the verifier")

        transport = httpx.ASGITransport(app=make_app(Ctx(Exploding())))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            for authorization in ("Bearer garbage", "Basic x", "Bearer"):
                response = await http.get("/public", headers={"Authorization": authorization})
                assert response.status_code == 200

    def test_principal_outside_requires_is_a_programming_error(self) -> None:
        request = Request({"type": "http", "headers": [], "state": {}})
        with pytest.raises(RuntimeError):
            principal(request)


class TestMetadata:
    def test_requirement_is_attached_for_openapi(self) -> None:
        @requires("read:patients", "update:patients", verified_email=True, mfa=True)
        async def update_patient(request: Request) -> Response:
            return Response()

        assert auth_requirement(update_patient) == AuthRequirement(
            permissions=("read:patients", "update:patients"), verified_email=True, mfa=True
        )
        assert update_patient.__name__ == "update_patient"
        assert auth_requirement(requires()(public)) == AuthRequirement()
        assert auth_requirement(public) is None

    def test_other_endpoint_metadata_survives(self) -> None:
        async def endpoint(request: Request) -> Response:
            return Response()

        endpoint.__operation__ = "kept"  # type: ignore[attr-defined]
        assert requires()(endpoint).__operation__ == "kept"  # type: ignore[attr-defined]


class TestPolicyFromSettings:
    """REQUIRE_VERIFIED_EMAIL_FOR / REQUIRE_MFA_FOR add requirements by permission."""

    def principal(self, **fields: Any) -> Principal:
        return Principal(
            sub="auth0|p", permissions=frozenset({"create:patients", "read:patients"}), **fields
        )

    def test_patient_writes_need_a_verified_email_by_default(self) -> None:
        requirement = AuthRequirement(("create:patients",))
        with pytest.raises(EmailNotVerified):
            check_requirement(self.principal(email_verified=False), requirement, settings().auth)
        check_requirement(self.principal(email_verified=True), requirement, settings().auth)

    def test_reads_do_not(self) -> None:
        check_requirement(
            self.principal(email_verified=False),
            AuthRequirement(("read:patients",)),
            settings().auth,
        )

    def test_lists_are_configurable(self) -> None:
        config = settings().auth.model_copy(
            update={"require_verified_email_for": [], "require_mfa_for": ["read:patients"]}
        )
        check_requirement(
            self.principal(email_verified=False), AuthRequirement(("create:patients",)), config
        )
        with pytest.raises(StepUpRequired):
            check_requirement(
                self.principal(amr=("pwd",)), AuthRequirement(("read:patients",)), config
            )
        check_requirement(
            self.principal(amr=("pwd", "mfa")), AuthRequirement(("read:patients",)), config
        )
