"""SESSION_DPOP on: a session's bound token is forwarded as `DPoP` with a fresh proof signed
by the session's key, for the upstream's URL and bound to that token (`ath`); so is a bound
token for another audience, got with a proof too."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from jose import jwt

from app.core.settings import Settings
from devkit.db import ProvisionedDatabase
from devkit.upstream import Upstream
from tests.remote.support import Running, remote_settings
from tests.session.support import login, with_cookie


@pytest.fixture
def settings(database: ProvisionedDatabase, table: Path) -> Settings:
    return remote_settings(database, table, session_dpop=True)


def _ath(token: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()


def _thumbprint(key: dict[str, str]) -> str:
    required = {
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
        "RSA": ("e", "kty", "n"),
    }
    members = {name: key[name] for name in required[key["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


@pytest.mark.parametrize("route", ["user", "other"])
async def test_a_bound_session_token_goes_with_a_proof(
    app: Running, upstream: Upstream, route: str
) -> None:
    cookie = with_cookie(await login(app.http))
    response = await app.http.get(f"/remote/{route}/whoami", headers=cookie)
    assert response.status_code == 200, response.text
    assert response.json()["scheme"] == "DPoP"
    (token,) = upstream.tokens()
    (seen,) = upstream.seen
    proof = seen.headers["dpop"]
    claims = jwt.get_unverified_claims(proof)
    header = jwt.get_unverified_header(proof)
    assert claims["htm"] == "GET"
    assert claims["htu"] == f"{upstream.url}/whoami"
    assert claims["ath"] == _ath(token)
    assert header["typ"] == "dpop+jwt"
    assert "d" not in header["jwk"]  # the public key only
    # The proof's key is the one the token is bound to (RFC 7638 thumbprint).
    assert jwt.get_unverified_claims(token)["cnf"]["jkt"] == _thumbprint(header["jwk"])
