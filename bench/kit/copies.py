"""Several copies of the service on one database, as an operator runs them behind a load
balancer, and the load the failover runs drive through them.

Each copy is `python -m app serve` in a process of its own with the same settings (one
stand-in tenant, one signing key for the audit digests). Every request of the load carries
its own `X-Request-ID` (`run-copy-n`), which the audit log records, so that afterwards each
acknowledged write and each data read served can be looked up in the database by its id.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import secrets
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from app.core.db import asyncpg_dsn
from bench.kit.faultstack import (
    AUDIENCE,
    CLIENT_ID,
    DOMAIN,
    PERMISSIONS,
    UNREACHABLE_LIMIT,
    make_call,
    service_base_env,
    tenant_server,
)
from bench.kit.loadgen import Answer, Call
from bench.kit.loopback import free_port
from bench.kit.servers import Server
from bench.kit.tenant import write_config
from devkit.db import ProvisionedDatabase, drop, provision
from devkit.keys import SigningKey, TokenMinter

T = TypeVar("T")
USERS = 8
AUDITOR = (*PERMISSIONS, "read:audit_events")
# What a served request of each kind must have left in the audit log.
ACTIONS = {"read": "patient.searched", "post": "patient.created", "update": "profile.updated"}
CRITICAL_UNRECORDED = "profile updated in Auth0 but its audit event could not be written"


@dataclass
class Copies:
    workdir: Path
    db: ProvisionedDatabase
    key: SigningKey
    tenant: Server
    servers: list[Server]
    env: dict[str, str]
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))

    @property
    def minter(self) -> TokenMinter:
        return TokenMinter(DOMAIN, AUDIENCE, keys=[self.key])

    def tokens(self) -> list[str]:
        return [
            self.minter.mint(f"auth0|failover-{n}", permissions=AUDITOR, email_verified=True)
            for n in range(USERS)
        ]

    def start_copy(self, name: str, port: int) -> Server:
        argv = [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", "1"]
        log = self.workdir / f"{name}.log"
        env = {"PUBLIC_URL": f"http://127.0.0.1:{port}", **self.env}
        server = Server(name, argv, env, port, 1, log, self.workdir)
        server.start()
        return server

    def calls(self, copy: int, kinds: tuple[str, ...]) -> Callable[[int], Call]:
        """Request n of copy `copy`'s load: `kinds` in turn, each with its own request id."""
        tokens = self.tokens()

        def call(n: int) -> Call:
            kind = kinds[n % len(kinds)]
            rid = f"{self.run_id}-{copy}-{n}"
            made = make_call(kind, tokens[n % len(tokens)], rid)
            headers = made.headers | {"X-Request-ID": rid}
            return Call(f"{kind}|{rid}", made.method, made.path, headers, made.body)

        return call

    def unrecorded_by_design(self) -> set[str]:
        """Request ids the copies logged as critical: a profile change Auth0 accepted whose
        audit event the database could not take (answered 200, kept for reconciliation)."""
        found: set[str] = set()
        for server in self.servers:
            with contextlib.suppress(OSError):
                for line in server.log_path.read_text(errors="replace").splitlines():
                    if CRITICAL_UNRECORDED in line:
                        with contextlib.suppress(ValueError):
                            found.add(str(json.loads(line).get("request_id")))
        return found


def _audit_signing_key() -> str:
    seed = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"failover-1:{seed}"


def _register_audit_key(env: dict[str, str], workdir: Path) -> None:
    """The owner registers the copies' digest key, as an operator does once per key."""
    subprocess.run(
        [sys.executable, "-m", "app", "audit", "register-key"],
        env=env,
        cwd=workdir,
        capture_output=True,
        check=True,
        timeout=60,
    )


@contextlib.contextmanager
def running_copies(
    admin_url: str, workdir: Path, count: int, service_env: dict[str, str] | None = None
) -> Iterator[Copies]:
    """A database provisioned through `admin_url` (the copies reach it through
    `service_env["DATABASE_URL"]`'s hosts when given), the tenant and `count` copies up;
    all stopped and the database dropped on the way out."""
    with contextlib.ExitStack() as stack:
        key = SigningKey.generate()
        secret = secrets.token_urlsafe(24)
        config = workdir / "tenant.json"
        write_config(
            config,
            key=key,
            domain=DOMAIN,
            audience=AUDIENCE,
            client_id=CLIENT_ID,
            secret=secret,
            publish_next=True,
        )
        tenant = tenant_server(workdir, config, free_port())
        stack.callback(tenant.stop)
        tenant.start()
        db = _in_a_thread(provision(admin_url, f"failover_{secrets.token_hex(4)}"))
        stack.callback(lambda: _in_a_thread(_drop_quietly(db)))
        env = service_base_env() | {
            "DATABASE_URL": db.app_url,
            "MIGRATIONS_DATABASE_URL": db.owner_url,
            "AUTH0_DOMAIN": DOMAIN,
            "AUTH0_AUDIENCE": AUDIENCE,
            "AUTH0_CLIENT_ID": CLIENT_ID,
            "AUTH0_CLIENT_SECRET": secret,
            "AUTH0_BASE_URL": tenant.url,
            "APP_SECRET_KEY": secrets.token_urlsafe(32),
            "RATE_LIMIT_PER_IP": UNREACHABLE_LIMIT,
            "RATE_LIMIT_PER_USER": UNREACHABLE_LIMIT,
            "AUTH0_MANAGEMENT_RATE": UNREACHABLE_LIMIT,
            "AUDIT_DIGESTS": "true",
            "AUDIT_SIGNING_KEY": _audit_signing_key(),
            "AUDIT_SCOPE_KEY": f"failover-1:{secrets.token_urlsafe(32)}",
            "LOG_LEVEL": "WARNING",
            **(service_env or {}),
        }
        _register_audit_key(env, workdir)
        copies = Copies(workdir, db, key, tenant, [], env)
        for n in range(count):
            server = copies.start_copy(f"copy{n}", free_port())
            stack.callback(server.stop)
            copies.servers.append(server)
        yield copies


def _in_a_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end, also from code an event loop is running (the runs)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _drop_quietly(db: ProvisionedDatabase) -> None:
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        await drop(db)


@dataclass(frozen=True)
class Ledger:
    """What the database holds for every acknowledged request, looked up by request id."""

    acknowledged: dict[str, int]  # kind: served (2xx) requests
    missing: dict[str, list[str]]  # kind: request ids with no record
    unrecorded_by_design: int  # 200s logged as critical instead (see Copies)
    rows_missing: int  # 201s whose patient row is gone

    @property
    def lost(self) -> int:
        return sum(len(ids) for ids in self.missing.values()) + self.rows_missing


async def check_ledger(owner_url: str, answers: list[Answer], excused: set[str]) -> Ledger:
    served = [a for a in answers if a.status is not None and 200 <= a.status < 300]
    by_kind: dict[str, list[str]] = {}
    for answer in served:
        kind, _, rid = answer.name.partition("|")
        if kind in ACTIONS:
            by_kind.setdefault(kind, []).append(rid)
    patient_ids = [a.patient_id for a in served if a.patient_id]
    conn = await asyncpg.connect(asyncpg_dsn(owner_url))
    try:
        missing: dict[str, list[str]] = {}
        for kind, rids in by_kind.items():
            rows = await conn.fetch(
                "SELECT DISTINCT request_id FROM audit_events"
                " WHERE action = $1 AND outcome = 'success' AND request_id = ANY($2::text[])",
                ACTIONS[kind],
                rids,
            )
            found = {r["request_id"] for r in rows}
            missing[kind] = [rid for rid in rids if rid not in found and rid not in excused]
        rows_found = await conn.fetchval(
            "SELECT count(*) FROM patients WHERE id = ANY($1::uuid[])", patient_ids
        )
    finally:
        await conn.close()
    acknowledged = {kind: len(rids) for kind, rids in by_kind.items()}
    unrecorded = len({rid for rids in by_kind.values() for rid in rids} & excused)
    return Ledger(acknowledged, missing, unrecorded, len(patient_ids) - rows_found)
