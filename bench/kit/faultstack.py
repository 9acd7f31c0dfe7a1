"""What every fault run stands on: a database, the stand-in tenant and the service, each in
a process of its own; the tokens and requests of the load; the counts afterwards; the report.

The service runs as production runs it (`python -m app serve`: uvicorn, uvloop, httptools,
`GracefulServer`), against a database provisioned for the run (`devkit.db.provision`) and
dropped afterwards, with rate limits out of reach (all the load comes from one address).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from app.core.db import asyncpg_dsn
from bench.kit.loadgen import Answer, Call, Load, Summary
from bench.kit.loopback import free_port, http_call
from bench.kit.servers import Server
from bench.kit.tenant import write_config
from devkit.db import ProvisionedDatabase, drop, provision
from devkit.keys import SigningKey, TokenMinter

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "faults-tenant.local"
AUDIENCE = "https://bff.faults/api"
CLIENT_ID = "faults-m2m-client"
UNREACHABLE_LIMIT = "1000000000/60"
PERMISSIONS = ("read:patients", "create:patients")
USERS = 8
POST_BODY = (
    '{"given_name":"Fault","family_name":"Load","birth_date":"1980-02-03",'
    '"identifier":{"system":"https://hospital.example.org/fhir/mrn","value":"%s"}}'
)


def log(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", flush=True)


def service_base_env() -> dict[str, str]:
    """This environment without any of the service's settings (and no `.env`: the cwd is
    the run directory), so nothing from the shell changes what is tried."""
    from app.core.settings import Settings

    names = set(Settings.env_names())
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["PYTHONPATH"] = str(REPO)
    return env


@dataclass
class Stack:
    workdir: Path
    db: ProvisionedDatabase
    key: SigningKey
    tenant: Server
    service: Server
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))

    @property
    def minter(self) -> TokenMinter:
        return TokenMinter(DOMAIN, AUDIENCE, keys=[self.key])

    def tokens(self, minter: TokenMinter | None = None) -> list[str]:
        """One token per load user, all with the same permissions and a verified email."""
        minter = minter or self.minter
        return [
            minter.mint(f"auth0|fault-{n}", permissions=PERMISSIONS, email_verified=True)
            for n in range(USERS)
        ]

    def tenant_post(self, path: str, body: bytes = b"{}") -> dict[str, object]:
        import json

        status, answer = http_call(
            self.tenant.url + path,
            method="POST",
            headers={"Content-Type": "application/json"},
            body=body,
        )
        if status != 200:
            raise RuntimeError(f"tenant {path}: HTTP {status}")
        return dict(json.loads(answer))


def tenant_server(workdir: Path, config: Path, port: int) -> Server:
    argv = [sys.executable, "-m", "bench.kit.tenant", str(config), str(port)]
    return Server(
        "tenant",
        argv,
        service_base_env(),
        port,
        1,
        workdir / "tenant.log",
        workdir,
        ready_path="/dev/stats",
    )


@contextlib.contextmanager
def running_stack(
    admin_url: str, workdir: Path, service_env: dict[str, str] | None = None, workers: int = 1
) -> Iterator[Stack]:
    """Database, tenant and service up; all stopped and the database dropped on the way out."""
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
        stack.callback(lambda: tenant.stop())
        tenant.start()
        db = asyncio.run(provision(admin_url, f"faults_{secrets.token_hex(4)}"))
        stack.callback(lambda: asyncio.run(drop(db)))
        port = free_port()
        env = service_base_env() | {
            "DATABASE_URL": db.app_url,
            "MIGRATIONS_DATABASE_URL": db.owner_url,
            "AUTH0_DOMAIN": DOMAIN,
            "AUTH0_AUDIENCE": AUDIENCE,
            "AUTH0_CLIENT_ID": CLIENT_ID,
            "AUTH0_CLIENT_SECRET": secret,
            "APP_SECRET_KEY": "bench-app-secret-key-0123456789abcdef",
            "AUTH0_BASE_URL": tenant.url,
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "RATE_LIMIT_PER_IP": UNREACHABLE_LIMIT,
            "RATE_LIMIT_PER_USER": UNREACHABLE_LIMIT,
            # The faults measured here are the tenant's and the database's, not a spent
            # budget (which bench.harness and tests/account/test_cached_profiles.py measure).
            "AUTH0_MANAGEMENT_RATE": UNREACHABLE_LIMIT,
            "LOG_LEVEL": "WARNING",
            **(service_env or {}),
        }
        argv = [
            sys.executable,
            "-m",
            "app",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        service = Server("service", argv, env, port, workers, workdir / "service.log", workdir)
        stack.callback(lambda: service.stop())
        service.start()
        yield Stack(workdir, db, key, tenant, service)


def make_call(kind: str, token: str, tag: str) -> Call:
    """One request of the load: `read`, `post`, `me`, `profile` or `update` (a profile
    change, through the Management API); `tag` keeps a POST's
    identifier unique (a duplicate would be a 409, not what is measured)."""
    auth = {"Authorization": f"Bearer {token}"}
    if kind == "read":
        return Call(kind, "GET", "/api/patients?limit=20", auth)
    if kind == "post":
        body = (POST_BODY % tag).encode()
        return Call(
            kind, "POST", "/api/patients", auth | {"Content-Type": "application/json"}, body
        )
    if kind == "me":
        return Call(kind, "GET", "/api/me", auth)
    if kind == "profile":
        return Call(kind, "GET", "/api/profile", auth)
    if kind == "update":
        body = b'{"nickname": "Fault Load"}'
        return Call(
            kind, "PATCH", "/api/profile", auth | {"Content-Type": "application/json"}, body
        )
    raise ValueError(kind)


@dataclass(frozen=True)
class Stored:
    """What the database holds for the POSTs that got 201, counted as the owner."""

    created: int  # distinct patient ids answered with 201
    rows: int  # of those, rows in `patients`
    events: int  # of those, with a successful `patient.created` audit event
    all_rows: int  # every row in `patients` (201'd or not)
    all_events: int  # every successful `patient.created` event

    @property
    def lost(self) -> int:
        return (self.created - self.rows) + (self.created - self.events)


async def count_stored(owner_url: str, answers: list[Answer]) -> Stored:
    ids = sorted({a.patient_id for a in answers if a.patient_id})
    conn = await asyncpg.connect(asyncpg_dsn(owner_url))
    try:
        rows = await conn.fetchval("SELECT count(*) FROM patients WHERE id = ANY($1::uuid[])", ids)
        events = await conn.fetchval(
            "SELECT count(DISTINCT patient_id) FROM audit_events"
            " WHERE action = 'patient.created' AND outcome = 'success'"
            " AND patient_id = ANY($1::uuid[])",
            ids,
        )
        all_rows = await conn.fetchval("SELECT count(*) FROM patients")
        all_events = await conn.fetchval(
            "SELECT count(*) FROM audit_events"
            " WHERE action = 'patient.created' AND outcome = 'success'"
        )
    finally:
        await conn.close()
    return Stored(len(ids), rows, events, all_rows, all_events)


@dataclass
class Report:
    """A scenario's figures and its criteria; `passed` only when every criterion holds."""

    scenario: str
    figures: dict[str, object] = field(default_factory=dict)
    checks: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, criterion: str, ok: bool) -> None:
        self.checks.append((criterion, bool(ok)))

    def summary(self, label: str, answers: list[Answer]) -> Summary:
        found = Summary.of(answers)
        others = ", ".join(f"{k}: {v}" for k, v in sorted(found.other.items())) or "none"
        self.figures[label] = (
            f"{found.requests} requests, {found.ok} 2xx, {found.unavailable} 503 "
            f"({found.unavailable - found.unavailable_without_retry_after} with Retry-After), "
            f"other: {others}; p50 {found.p50_ms:.0f} ms, p99 {found.p99_ms:.0f} ms, "
            f"max {found.max_ms:.0f} ms"
        )
        return found

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _, ok in self.checks)

    def render(self) -> str:
        width = max(len(k) for k in [*self.figures, "criterion"])
        lines = [f"== {self.scenario} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"]
        lines += [f"  {k:<{width}}  {v}" for k, v in self.figures.items()]
        lines += [f"  {'PASS' if ok else 'FAIL'}  {text}" for text, ok in self.checks]
        lines.append(f"  overall: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


# --- Running a load beside a fault -------------------------------------------------------


def mixed_calls(stack: Stack, kinds: Sequence[str], tokens: Sequence[str]) -> Callable[[int], Call]:
    """Request n of a load: the kinds and tokens in turn."""

    def call(n: int) -> Call:
        return make_call(kinds[n % len(kinds)], tokens[n % len(tokens)], f"{stack.run_id}-{n}")

    return call


async def under_load(load: Load, steps: Callable[[], Awaitable[None]], grace: float) -> None:
    """Run the load, run `steps` (sleeps and faults) beside it, then stop the load."""
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop, grace))
    try:
        await steps()
    finally:
        stop.set()
        await task


def of_kind(answers: list[Answer], *names: str) -> list[Answer]:
    return [a for a in answers if a.name in names]


def recovery(
    report: Report, answers: list[Answer], cleared: float, end: float, within: float
) -> None:
    """How long after `cleared` the last failure started (at most `within` seconds); the
    final second all 2xx."""
    failed = [a.started for a in answers if not (a.status and 200 <= a.status < 300)]
    last = max((t for t in failed if t >= cleared), default=cleared)
    report.figures["recovered after"] = f"{last - cleared:.1f} s (last failure after the fault)"
    report.check(f"recovered within {within:g} s of the fault's end", last - cleared <= within)
    final = [a for a in answers if a.started >= end - 1.0]
    report.check(
        "answers 2xx again after the fault, without a restart (final second all 2xx)",
        bool(final) and all(a.status and 200 <= a.status < 300 for a in final),
    )


def common_checks(report: Report, load: Load, allowed: set[int]) -> None:
    stuck = load.pending
    odd = [a for a in load.answers if a.status not in allowed]
    bare = [a for a in load.answers if a.status == 503 and not a.retry_after]
    report.figures["still pending at the end"] = stuck
    report.check(
        f"no status outside {sorted(allowed)} and no transport error ({len(odd)})", not odd
    )
    report.check(f"every 503 carries Retry-After ({len(bare)} without)", not bare)
    report.check(f"no stuck request ({stuck} pending)", stuck == 0)
