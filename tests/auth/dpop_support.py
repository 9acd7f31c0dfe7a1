"""What the DPoP tests share: the public origin, a bound token and its proof, and the check
of a refusal (status, problem body, challenge, nothing remembered, the audit trail).

Not a test module; tests/conftest.py registers it for pytest's assertion rewriting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from devkit.dpop import DPoPKey
from devkit.keys import ALL_PERMISSIONS, TokenMinter
from tests.helpers import assert_problem

PUBLIC_URL = "https://app.test"
PATIENTS = "/api/patients"
ALGS = "ES256 EdDSA RS256"
USER = "auth0|dpop-user"


@dataclass
class Client:
    """A DPoP client: its key and an access token bound to it."""

    key: DPoPKey
    token: str

    def headers(
        self, method: str = "GET", url: str = PUBLIC_URL + PATIENTS, **proof: Any
    ) -> dict[str, str]:
        """`Authorization: DPoP` and a fresh proof for `method url` (`proof`: overrides)."""
        return {
            "Authorization": f"DPoP {self.token}",
            "DPoP": self.key.proof(method, url, access_token=self.token, **proof),
        }


def bound_client(minter: TokenMinter, alg: str = "ES256", **claims: Any) -> Client:
    key = DPoPKey.generate(alg)
    claims.setdefault("cnf", {"jkt": key.thumbprint})
    return Client(key, minter.mint(USER, permissions=ALL_PERMISSIONS, **claims))


def challenge(error: str | None, description: str | None = None) -> str:
    """The `DPoP` challenge of a refusal (RFC 9449 section 7.1)."""
    found = f'DPoP algs="{ALGS}", realm="api"'
    if error is not None:
        found += f', error="{error}", error_description="{description}"'
    return found


async def remembered(owner: asyncpg.Connection) -> int:
    """How many proofs the service remembers (each accepted one, never a refused one)."""
    count: int = await owner.fetchval("SELECT count(*) FROM dpop_proofs")
    return count


async def assert_refused(
    response: httpx.Response,
    owner: asyncpg.Connection,
    detail: str,
    *,
    error: str = "invalid_dpop_proof",
    audited: bool = True,
) -> dict[str, Any]:
    """A 401 with the problem body saying `detail`, the `DPoP` challenge with `error`, no
    proof remembered, no data read, and the refusal in the audit log only when the token
    itself verified (`audited`)."""
    body = assert_problem(response, 401, detail=detail)
    assert response.headers["www-authenticate"] == challenge(error, detail)
    assert await remembered(owner) == 0
    rows = await owner.fetch(
        "SELECT action, outcome, outcome_reason FROM audit_events ORDER BY seq"
    )
    expected = [("access.denied", "denied", detail)] if audited else []
    assert [(r["action"], r["outcome"], r["outcome_reason"]) for r in rows] == expected
    return body
