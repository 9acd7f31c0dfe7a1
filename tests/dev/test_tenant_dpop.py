"""The stand-in tenant's DPoP at the token endpoint (devkit/tenant/dpop.py), as Auth0 does it:
bound tokens for a grant with a proof, the nonce dance, and the proofs it refuses."""

from __future__ import annotations

import time
from typing import Any

import httpx
from jose import jwt

from devkit.dpop import DPoPKey
from devkit.tenant.state import TenantState
from tests.dev import tenant_login
from tests.dev.tenant_login import CALLBACK, CLIENT, login

state = tenant_login.state
tenant = tenant_login.tenant

TOKEN_URL = "http://tenant/oauth/token"


async def _grant(
    tenant: httpx.AsyncClient, form: dict[str, str], key: DPoPKey, **proof: Any
) -> httpx.Response:
    """A token request with a proof of `key`; once more with the nonce the tenant names."""
    answer = await tenant.post(
        "/oauth/token", data=form, headers={"DPoP": key.proof("POST", TOKEN_URL, **proof)}
    )
    if answer.status_code == 400 and answer.json()["error"] == "use_dpop_nonce":
        nonce = answer.headers["dpop-nonce"]
        proof = {**proof, "nonce": nonce}
        answer = await tenant.post(
            "/oauth/token", data=form, headers={"DPoP": key.proof("POST", TOKEN_URL, **proof)}
        )
    return answer


async def _code_form(tenant: httpx.AsyncClient) -> dict[str, str]:
    code, verifier = await login(tenant)
    return {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
        **CLIENT,
    }


async def test_a_proof_without_nonce_is_told_the_nonce_then_gets_bound_tokens(
    tenant: httpx.AsyncClient, state: TenantState
) -> None:
    key = DPoPKey.generate()
    form = await _code_form(tenant)
    first = await tenant.post(
        "/oauth/token", data=form, headers={"DPoP": key.proof("POST", TOKEN_URL)}
    )
    assert first.status_code == 400
    assert first.json()["error"] == "use_dpop_nonce"
    nonce = first.headers["dpop-nonce"]

    # The code was not used up by the challenge.
    proof = key.proof("POST", TOKEN_URL, nonce=nonce)
    answer = await tenant.post("/oauth/token", data=form, headers={"DPoP": proof})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "DPoP"
    assert jwt.get_unverified_claims(body["access_token"])["cnf"] == {"jkt": key.thumbprint}
    assert answer.headers["dpop-nonce"] == nonce
    assert state.counts["dpop_nonce_challenge"] == 1 and state.counts["dpop_grant"] == 1


async def test_a_refresh_with_another_key_is_refused(tenant: httpx.AsyncClient) -> None:
    key = DPoPKey.generate()
    answer = await _grant(tenant, await _code_form(tenant), key)
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": answer.json()["refresh_token"],
        **CLIENT,
    }

    other = await _grant(tenant, refresh, DPoPKey.generate())
    assert other.status_code == 403
    assert other.json()["error"] == "invalid_grant"
    same = await _grant(tenant, refresh, key)
    assert same.status_code == 200, same.text
    assert same.json()["token_type"] == "DPoP"


async def test_without_a_proof_the_tokens_are_bearer(tenant: httpx.AsyncClient) -> None:
    form = await _code_form(tenant)
    answer = await tenant.post("/oauth/token", data=form)
    assert answer.status_code == 200
    assert answer.json()["token_type"] == "Bearer"
    assert "cnf" not in jwt.get_unverified_claims(answer.json()["access_token"])


async def test_proofs_it_refuses(tenant: httpx.AsyncClient) -> None:
    key = DPoPKey.generate()
    form = await _code_form(tenant)
    bad = [
        key.proof("POST", "http://tenant/oauth/other"),
        key.proof("GET", TOKEN_URL),
        key.proof("POST", TOKEN_URL, iat=time.time() - 3600),
        key.proof("POST", TOKEN_URL, header={"typ": "JWT"}),
        key.proof("POST", TOKEN_URL, header={"jwk": key.private_jwk}),
        "not-a-proof",
    ]
    for proof in bad:
        answer = await tenant.post("/oauth/token", data=form, headers={"DPoP": proof})
        assert answer.status_code == 400, proof
        assert answer.json()["error"] == "invalid_dpop_proof"
    # None of them used the code up.
    assert (await _grant(tenant, form, key)).status_code == 200
