"""`/openapi.json` names the ways in that this instance takes on its `/api` and `/fhir`
routes, and only those: bearer (unless DPOP_MODE=required), DPoP (unless off), the session
cookie with X-CSRF (cookie mode). Each listed way works and each unlisted one is refused,
and nothing else in the document depends on them."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.settings import Settings
from app.http.openapi import build_openapi
from app.http.ops import API_TITLE, API_VERSION
from app.main import create_app
from app.session.cookies import SESSION_COOKIE
from app.session.resolver import CSRF_HEADER
from devkit.db import ProvisionedDatabase
from devkit.keys import ALL_PERMISSIONS, TokenMinter
from tests.auth.dpop_support import PATIENTS, USER, bound_client
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.fixtures.standin import StandIn
from tests.helpers import assert_problem, bearer
from tests.session.support import login, session_settings, with_cookie

MODES = ["off", "allowed", "required"]
BEARER = {"bearerAuth": []}
DPOP = {"dpop": []}
COOKIE = {"cookie": [], "csrf": []}
WAYS_IN = ("bearerAuth", "dpop", "cookie", "csrf")


def _settings(database: ProvisionedDatabase, mode: str, cookie: bool, **more: Any) -> Settings:
    if cookie:
        return session_settings(database, dpop_mode=mode, **more)
    return make_settings(database, dpop_mode=mode, **more)


def _expected(mode: str, cookie: bool) -> list[dict[str, list[str]]]:
    ways = [BEARER] if mode != "required" else []
    ways += [DPOP] if mode != "off" else []
    return ways + ([COOKIE] if cookie else [])


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m, path): op for path, ops in spec["paths"].items() for m, op in ops.items()}


def _guarded(settings: Settings) -> set[tuple[str, str]]:
    """The operations behind `requires`, from the app's own route table."""
    return {
        (method.lower(), route.path_format)
        for route in create_app(settings).routes
        if getattr(route, "include_in_schema", False)
        and getattr(getattr(route, "endpoint", None), "__auth__", None) is not None
        for method in (getattr(route, "methods", None) or set()) - {"HEAD"}
    }


def _without_access(spec: dict[str, Any]) -> dict[str, Any]:
    """The document without what depends on the ways in: security and the 401 headers."""
    out = {**spec, "components": {**spec["components"]}}
    out["components"]["securitySchemes"] = {
        k: v for k, v in spec["components"]["securitySchemes"].items() if k not in WAYS_IN
    }
    paths: dict[str, Any] = {}
    for path, ops in spec["paths"].items():
        paths[path] = {}
        for method, op in ops.items():
            op = {k: v for k, v in op.items() if k != "security" or v == [{"logStreamToken": []}]}
            responses = dict(op["responses"])
            if "401" in responses:
                responses["401"] = {k: v for k, v in responses["401"].items() if k != "headers"}
            paths[path][method] = {**op, "responses": responses}
    out["paths"] = paths
    return out


@pytest.mark.parametrize("cookie", [False, True], ids=["bearer-only", "cookie-mode"])
@pytest.mark.parametrize("mode", MODES)
async def test_the_document_lists_what_the_instance_accepts(
    database: ProvisionedDatabase, standin: StandIn, minter: TokenMinter, mode: str, cookie: bool
) -> None:
    settings = _settings(database, mode, cookie)
    async with running_app(settings) as app:
        spec = (await app.get("/openapi.json")).json()
        expected = _expected(mode, cookie)
        schemes = spec["components"]["securitySchemes"]
        assert set(schemes) == {name for way in expected for name in way} | {"logStreamToken"}
        guarded = _guarded(settings)
        assert len(guarded) >= 25
        for key, op in _operations(spec).items():
            if key in guarded:
                assert op["security"] == expected, key
                assert key[1].startswith(("/api/", "/fhir/")), key
                challenge = op["responses"]["401"]["headers"]["WWW-Authenticate"]
                assert challenge["required"] is True, key
            elif key != ("post", "/hooks/auth0/log-stream"):
                assert "security" not in op, key

        # Each way in that is listed works; each that is not is refused.
        unbound = minter.mint(USER, permissions=ALL_PERMISSIONS)
        response = await app.get(PATIENTS, headers=bearer(unbound))
        assert response.status_code == (200 if BEARER in expected else 401), response.text
        dpop = bound_client(minter)
        assert settings.server.public_url is not None
        proof = dpop.headers("GET", settings.server.public_url + PATIENTS)
        response = await app.get(PATIENTS, headers=proof)
        assert response.status_code == (200 if DPOP in expected else 401), response.text
        if cookie:
            session = await login(app)
            assert (await app.get(PATIENTS, headers=with_cookie(session))).status_code == 200
            refused = await app.get(PATIENTS, headers=with_cookie(session, csrf=False))
            assert_problem(refused, 403)
        else:
            refused = await app.get(PATIENTS, headers=with_cookie("A" * 43))
            assert_problem(refused, 401)

    # Nothing else differs from the bearer-only document the service published before.
    before = build_openapi(create_app(settings).routes, title=API_TITLE, version=API_VERSION)
    assert _without_access(spec) == _without_access(before)


@pytest.mark.parametrize("mode", ["allowed", "required"])
async def test_the_dpop_scheme_says_what_to_send(
    database: ProvisionedDatabase, standin: StandIn, mode: str
) -> None:
    async with running_app(_settings(database, mode, cookie=False)) as app:
        spec = (await app.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["dpop"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "DPoP")
    for needed in ("`DPoP` request header", "typ: dpop+jwt", "`htu`", "`ath`", "docs/dpop.md"):
        assert needed in scheme["description"]
    assert ("bearer tokens are refused" in scheme["description"]) is (mode == "required")
    headers = spec["paths"]["/api/me"]["get"]["responses"]["401"]["headers"]
    assert set(headers) == {"WWW-Authenticate"}
    assert 'DPoP algs="ES256 EdDSA RS256"' in headers["WWW-Authenticate"]["description"]


async def test_with_nonces_the_401_documents_the_nonce_header(
    database: ProvisionedDatabase, standin: StandIn
) -> None:
    settings = _settings(database, "allowed", cookie=False, dpop_nonce=True)
    async with running_app(settings) as app:
        spec = (await app.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["dpop"]
    assert "use_dpop_nonce" in scheme["description"]
    headers = spec["paths"]["/fhir/AuditEvent"]["get"]["responses"]["401"]["headers"]
    assert list(headers) == ["WWW-Authenticate", "DPoP-Nonce"]
    assert "required" not in headers["DPoP-Nonce"]


async def test_the_cookie_scheme_names_the_cookie_and_its_csrf_header(
    database: ProvisionedDatabase, standin: StandIn
) -> None:
    async with running_app(_settings(database, "allowed", cookie=True)) as app:
        spec = (await app.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert {k: schemes["cookie"][k] for k in ("type", "in", "name")} == {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
    }
    assert "`X-CSRF: 1`" in schemes["cookie"]["description"]
    csrf = schemes["csrf"]
    assert (csrf["type"], csrf["in"], csrf["name"].lower()) == ("apiKey", "header", CSRF_HEADER)
