"""The stand-in Auth0 tenant in a process of its own, signing with a key the harness made.

    python -m bench.kit.tenant CONFIG.json PORT

CONFIG holds the domain, audience, M2M client id and secret, the signing key (kid,
private PEM, public JWK), so the harness can mint tokens the tenant's JWKS vouches for,
and the secret of the cookie sessions' web application (bench/harness/sessions.py).
`GET /dev/stats` counts the requests of each kind (jwks, discovery, oauth_token, ...).
With `publish_next` in CONFIG the JWKS also holds the next key, as Auth0's does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import uvicorn

from devkit.keys import SigningKey, TokenMinter
from devkit.tenant.app import create_tenant_app
from devkit.tenant.state import TenantState

# The client id of the cookie sessions' web application at the tenant; our service is
# given the same one (bench/harness/launch.py).
SESSION_CLIENT_ID = "bench-session-client"


def write_config(
    path: Path,
    *,
    key: SigningKey,
    domain: str,
    audience: str,
    client_id: str,
    secret: str,
    publish_next: bool = False,
    session_secret: str | None = None,
) -> None:
    document = {
        "domain": domain,
        "audience": audience,
        "client_id": client_id,
        "client_secret": secret,
        "kid": key.kid,
        "private_pem": key.private_pem.decode(),
        "public_jwk": key.public_jwk,
        "publish_next": publish_next,
        "session_secret": session_secret,
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    path.chmod(0o600)


def tenant_state(config: dict[str, Any]) -> TenantState:
    key = SigningKey(config["kid"], config["private_pem"].encode(), config["public_jwk"])
    minter = TokenMinter(config["domain"], config["audience"], keys=[key])
    if config.get("publish_next"):  # as Auth0 does: the next key is published ahead of use
        minter.next_key = SigningKey.generate()
    state = TenantState(minter, config["client_id"], config["client_secret"])
    if config.get("session_secret"):  # the web application of the cookie sessions
        state.session_client_id = SESSION_CLIENT_ID
        state.session_client_secret = config["session_secret"]
    return state


def main(argv: list[str]) -> None:
    config = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    uvicorn.run(
        create_tenant_app(tenant_state(config)),
        host="127.0.0.1",
        port=int(argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
