"""`python -m app dev`: the whole service on a newcomer's machine with nothing configured.

A stand-in Auth0 tenant on its own loopback port, a database (`DATABASE_URL` if set, else a
throwaway embedded Postgres with both roles provisioned), migrations applied, the service
started, and a ready-to-paste `curl` line with a freshly minted access token, and the
command that makes the same call with DPoP (`python -m devkit.dpop`). Cookie mode is on
against the stand-in tenant, its sessions' tokens DPoP-bound (SESSION_DPOP, unless the
environment says false), and a small page at `/` (devkit/page.py) signs in through it.

It trusts `X-Forwarded-For` exactly as `serve` does, from TRUSTED_PROXIES only (uvicorn's
own default would believe any local process), and sends no Strict-Transport-Security:
it serves plain HTTP on loopback, and a browser would pin that host to HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import uvicorn
from cryptography.fernet import Fernet

from app.audit.digests import register_keys
from app.audit.signing import KeyRing
from app.core.db import connect_raw, migrate
from app.core.logs import StartupGate, configure_dev_logging
from app.core.settings import Settings
from app.http.server import GracefulServer
from app.main import create_app
from devkit.db import ProvisionedDatabase, embedded_server, provision
from devkit.keys import ALL_PERMISSIONS, TokenMinter, dev_audit_keys
from devkit.page import add_page
from devkit.tenant.app import create_tenant_app
from devkit.tenant.state import TenantState
from devkit.upstream import serve_upstream

DEV_DOMAIN = "dev-tenant.local"
DEV_AUDIENCE = "https://bff.local/api"
DEV_SESSION_CLIENT_ID = "dev-session-client"
# The stand-in remote API (devkit/upstream.py): another API than the service's own, so a
# call to it from the page shows a session's token for a second audience.
DEV_LABS_AUDIENCE = "https://labs.bff.local"
# Every user signs in with every permission, except this one: a clinician who may work with
# patients but not read the audit log (the console's 403 pages show with it).
DEV_CLINICIAN = "clinician"
CLINICIAN_PERMISSIONS = ["read:patients", "create:patients", "update:patients"]
# An organisation for the console's member pages: sign in with
# /auth/login?organization=org_dev as "admin" and manage "carol" (roles below may change hands).
DEV_ORG = "org_dev"
DEV_ORG_MEMBERS = {"auth0|admin", "auth0|carol"}
DEV_ASSIGNABLE_ROLES = "rol_Nurse,rol_Doctor"


class _QuietServer(uvicorn.Server):
    """A second server in the same loop must leave signal handling to the first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def dev_remote_apis(upstream_url: str) -> Iterator[str]:
    """REMOTE_APIS_FILE if the environment names one, else a table with one route, `labs`,
    to the stand-in upstream, with the user's token for its audience."""
    given = os.environ.get("REMOTE_APIS_FILE")
    if given:
        yield given
        return
    table = {
        "apis": {
            "labs": {
                "upstream": upstream_url,
                "methods": ["GET"],
                "token": "user",
                "audience": DEV_LABS_AUDIENCE,
                "rate_limit": "120/60",
            }
        }
    }
    with tempfile.TemporaryDirectory(prefix="bff-dev-") as directory:
        path = Path(directory) / "remote-apis.json"
        path.write_text(json.dumps(table, indent=2))
        yield str(path)


@contextlib.asynccontextmanager
async def dev_database() -> AsyncIterator[tuple[str, str]]:
    """(app URL, owner URL): from the environment, else a throwaway embedded server."""
    url = os.environ.get("DATABASE_URL")
    if url:
        owner = os.environ.get("MIGRATIONS_DATABASE_URL") or url
        await migrate(owner)
        yield url, owner
        return
    with embedded_server() as admin_url:
        db: ProvisionedDatabase = await provision(admin_url, name="bff_dev")
        yield db.app_url, db.owner_url


async def _register_audit_key(owner_url: str, signing_key: str) -> None:
    """As `python -m app audit register-key` does, as the owner."""
    conn = await connect_raw(owner_url)
    try:
        await register_keys(conn, KeyRing.from_setting(signing_key))
    finally:
        await conn.close()


async def _started(server: uvicorn.Server) -> None:
    # uvicorn offers a flag, not an event, for "listening".
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def run_dev(*, port: int, tenant_port: int) -> int:
    # Readable lines; start-up's INFO chatter left out: the banner says what it did.
    startup = configure_dev_logging(os.environ.get("LOG_LEVEL", "INFO"))
    client_id, client_secret = "dev-m2m-client", secrets.token_urlsafe(24)
    # Cookie mode on: the tenant's Regular Web Application calls back to this service.
    # Chromium treats http://127.0.0.1 as a secure context, so the `Secure`, `__Host-`
    # session cookie works there without TLS (tests/dev/test_browser.py shows it).
    public_url = f"http://127.0.0.1:{port}"
    tenant = TenantState(
        TokenMinter(DEV_DOMAIN, DEV_AUDIENCE),
        client_id,
        client_secret,
        session_client_id=DEV_SESSION_CLIENT_ID,
        session_client_secret=secrets.token_urlsafe(24),
        allowed_callbacks=[f"{public_url}/auth/callback"],
        allowed_logout_urls=[f"{public_url}/"],
        backchannel_logout_url=f"{public_url}/auth/backchannel-logout",
        other_audiences={DEV_LABS_AUDIENCE},
    )
    tenant.user_permissions[f"auth0|{DEV_CLINICIAN}"] = CLINICIAN_PERMISSIONS
    tenant.org_members[DEV_ORG] = set(DEV_ORG_MEMBERS)
    tenant.member_roles[(DEV_ORG, "auth0|carol")] = [
        {"id": "rol_Nurse", "name": "Nurse", "description": "Ward nurse"}
    ]

    with serve_upstream() as upstream, dev_remote_apis(upstream.url) as remote_apis:
        return await _run(startup, port, tenant, tenant_port, public_url, remote_apis, upstream.url)


async def _run(
    startup: StartupGate,
    port: int,
    tenant: TenantState,
    tenant_port: int,
    public_url: str,
    remote_apis: str,
    upstream_url: str,
) -> int:
    client_id, client_secret = tenant.client_id, tenant.client_secret
    tenant_url = f"http://127.0.0.1:{tenant_port}"
    async with dev_database() as (app_url, owner_url):
        signing_key, scope_key = dev_audit_keys(app_url)
        await _register_audit_key(owner_url, signing_key)
        settings = Settings(
            database_url=app_url,
            migrations_database_url=owner_url,
            auth0_domain=DEV_DOMAIN,
            auth0_audience=DEV_AUDIENCE,
            auth0_client_id=client_id,
            auth0_client_secret=client_secret,
            auth0_base_url=tenant_url,
            auth0_log_stream_token=secrets.token_urlsafe(24),
            app_secret_key=secrets.token_urlsafe(48),  # lives as long as this process
            # Signed audit digests, with keys of this database's (devkit/keys.py).
            audit_digests=True,
            audit_signing_key=signing_key,
            audit_scope_key=scope_key,
            hsts_seconds=0,
            session_client_id=tenant.session_client_id,
            session_client_secret=tenant.session_client_secret,
            public_url=public_url,
            session_encryption_key=Fernet.generate_key().decode(),  # lives as long as this process
            # The sessions' tokens bound to a key each (the tenant stands in for an API
            # that allows DPoP); SESSION_DPOP=false shows them as bearer tokens.
            session_dpop=os.environ.get("SESSION_DPOP", "true"),
            # /remote/labs/... to the stand-in upstream (docs/remote-apis.md).
            remote_apis_file=remote_apis,
            assignable_roles=DEV_ASSIGNABLE_ROLES,
            _env_file=None,
        )
        tenant_server = _QuietServer(
            uvicorn.Config(
                create_tenant_app(tenant),
                host="127.0.0.1",
                port=tenant_port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        app_server = GracefulServer(
            uvicorn.Config(
                add_page(create_app(settings)),  # the page at / (development only)
                host="127.0.0.1",
                port=port,
                log_config=None,
                loop="none",
                server_header=False,
                proxy_headers=False,  # the app applies TRUSTED_PROXIES, as under `serve`
            )
        )
        tenant_task = asyncio.create_task(tenant_server.serve())
        await _started(tenant_server)
        app_task = asyncio.create_task(app_server.serve())
        try:
            await asyncio.wait_for(_started(app_server), timeout=30)
        except TimeoutError:
            print("error: the service did not start; see the log above")
            app_server.should_exit = tenant_server.should_exit = True
            return 1
        token = tenant.minter.mint(
            "auth0|dev-user", permissions=ALL_PERMISSIONS, email_verified=True
        )
        print(_banner(port, tenant_url, token, upstream_url), flush=True)
        startup.open()  # from here on: requests and the rest, at LOG_LEVEL
        await app_task
        tenant_server.should_exit = True
        await tenant_task
    return 0


def _banner(port: int, tenant_url: str, token: str, upstream_url: str) -> str:
    base = f"http://127.0.0.1:{port}"
    mint = shlex.quote('{"sub": "auth0|alice", "permissions": ["read:patients"]}')
    return f"""
  service  {base}   (API explorer: {base}/docs)
  page     {base}/   (sign in with any user name, list and create patients: cookie mode)
  console  {base}/console/   (auditors; "{DEV_CLINICIAN}": no audit permission; docs/console.md)
  tenant   {tenant_url}   (local stand-in for Auth0; development only)
  upstream {upstream_url}   (a stand-in remote API: {base}/remote/labs/whoami with the cookie)

  An access token for auth0|dev-user with every permission (valid for one hour):

  curl -H "Authorization: Bearer {token}" {base}/api/me

  The same with a DPoP-bound token and a proof per request (RFC 9449), from the checkout:

  python -m devkit.dpop --tenant {tenant_url} {base}/api/me

  More tokens: curl -X POST {tenant_url}/dev/token -H 'content-type: application/json' -d {mint}
  Stop with Ctrl+C.
"""
