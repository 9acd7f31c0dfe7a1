"""Throughput and latency of the patient endpoints under concurrent load, on loopback.

    python -m bench.studies.patients [--patients 100000] [--scopes 100] [--duration 10]
                                     [--concurrency 32] [--workers 1]

Provisions a throwaway database (BENCH_ADMIN_URL, default the local server at
postgresql://postgres@127.0.0.1:5432/postgres), seeds it with `--patients` patients spread
over `--scopes` organisations, serves the stand-in tenant (JWKS) in this process and the
service under uvicorn (uvloop, httptools) in a child process, then drives, one phase each:

- `GET /api/patients?limit=20` (a search page of 20; 20 audited reads per request)
- `POST /api/patients` (a new patient with a fresh identifier; one audited create)

with `--concurrency` keep-alive connections, each request as a random organisation's user.
The load generator is a minimal HTTP/1.1 client on asyncio streams (`wrk` is not installed
here; httpx would cost more CPU per request than the service). The first `--warmup` seconds
of each phase are not counted. Everything is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg
import orjson
import uvicorn

from app.core.db import asyncpg_dsn
from app.patients.repository import fold
from devkit.db import LOCAL_SERVER_URL, ProvisionedDatabase, drop, provision
from devkit.keys import ALL_PERMISSIONS, TokenMinter
from devkit.tenant.app import create_tenant_app
from devkit.tenant.state import TenantState

DOMAIN = "bench-tenant.local"
AUDIENCE = "https://bench.local/api"
GIVEN = ["Ana", "Élodie", "Jürgen", "Zoë", "Li", "Omar", "Søren", "María", "Kofi", "Aiko"]
FAMILY = ["Lima", "Dupont", "Müller", "Åberg", "Wang", "Haddad", "Nørgaard", "García", "Mensah"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def seed(db: ProvisionedDatabase, patients: int, scopes: int) -> None:
    """Bulk-load patients with COPY, as the owner (what the service writes, folded names too)."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    records = []
    for n in range(patients):
        given, family = rng.choice(GIVEN), rng.choice(FAMILY)
        created = now - timedelta(seconds=rng.randrange(365 * 86400))
        records.append(
            (
                uuid.uuid4(),
                f"org:org_{n % scopes:03d}",
                "auth0|seed",
                "urn:bench:mrn",
                f"S{n}",
                given,
                family,
                fold(given),
                fold(family),
                date(1930, 1, 1) + timedelta(days=rng.randrange(90 * 365)),
                rng.choice(["male", "female", "other", "unknown"]),
                created,
                created,
            )
        )
    conn = await asyncpg.connect(asyncpg_dsn(db.owner_url))
    try:
        await conn.copy_records_to_table(
            "patients",
            records=records,
            columns=[
                "id",
                "scope",
                "created_by",
                "identifier_system",
                "identifier_value",
                "given_name",
                "family_name",
                "given_name_folded",
                "family_name_folded",
                "birth_date",
                "gender",
                "created_at",
                "updated_at",
            ],
        )
        await conn.execute("ANALYZE patients")
    finally:
        await conn.close()


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def tenant_server(state: TenantState) -> AsyncIterator[str]:
    port = _free_port()
    server = _QuietServer(
        uvicorn.Config(
            create_tenant_app(state),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.contextmanager
def service(
    db: ProvisionedDatabase, tenant_url: str, state: TenantState, workers: int, pool: int
) -> Iterator[int]:
    port = _free_port()
    env = os.environ | {
        "DATABASE_URL": db.app_url,
        "MIGRATIONS_DATABASE_URL": db.owner_url,
        "AUTH0_DOMAIN": DOMAIN,
        "AUTH0_AUDIENCE": AUDIENCE,
        "AUTH0_CLIENT_ID": state.client_id,
        "AUTH0_CLIENT_SECRET": state.client_secret,
        "APP_SECRET_KEY": "bench-app-secret-key-0123456789abcdef",
        "AUTH0_BASE_URL": tenant_url,
        "DB_POOL_MIN_SIZE": str(pool),
        "DB_POOL_MAX_SIZE": str(pool),
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            "--workers",
            str(workers),
        ],
        env=env,
    )
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _ready(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: bench\r\n\r\n")
            status, _ = await _read_response(reader)
            writer.close()
            if status == 200:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError("the service did not become ready")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    counted_seconds: float = 0.0


async def run_phase(
    port: int,
    phase: Phase,
    make: Callable[[], bytes],
    *,
    concurrency: int,
    warmup: float,
    duration: float,
) -> None:
    start = time.perf_counter()
    count_from, stop_at = start + warmup, start + warmup + duration

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (now := time.perf_counter()) < stop_at:
                writer.write(make())
                status, _ = await _read_response(reader)
                done = time.perf_counter()
                if now >= count_from:
                    phase.latencies.append(done - now)
                    phase.statuses[status] = phase.statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    phase.counted_seconds = duration


def _request(method: str, path: str, token: bytes, body: bytes = b"") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer ").encode()
    head += token + b"\r\n"
    if body:
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def report(phase: Phase) -> str:
    lat = sorted(phase.latencies)
    if not lat:
        return f"{phase.name}: no requests completed"
    q = statistics.quantiles(lat, n=100, method="inclusive")
    ok = sum(n for s, n in phase.statuses.items() if 200 <= s < 300)
    return (
        f"{phase.name:<28} {len(lat) / phase.counted_seconds:8.0f} req/s   "
        f"p50 {q[49] * 1000:6.2f} ms   p95 {q[94] * 1000:6.2f} ms   "
        f"p99 {q[98] * 1000:6.2f} ms   ({len(lat)} requests, {ok} 2xx, "
        f"statuses {dict(sorted(phase.statuses.items()))})"
    )


async def main(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("BENCH_ADMIN_URL", LOCAL_SERVER_URL)
    state = TenantState(TokenMinter(DOMAIN, AUDIENCE), "bench-m2m", secrets.token_urlsafe(24))
    tokens = [
        state.minter.mint(
            f"auth0|bench-{i}",
            permissions=ALL_PERMISSIONS,
            org_id=f"org_{i:03d}",
            email_verified=True,
        ).encode()
        for i in range(args.scopes)
    ]
    db = await provision(admin_url, name=f"bff_bench_{secrets.token_hex(4)}")
    try:
        started = time.perf_counter()
        await seed(db, args.patients, args.scopes)
        print(
            f"seeded {args.patients} patients in {args.scopes} scopes "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        async with tenant_server(state) as tenant_url:
            with service(db, tenant_url, state, args.workers, args.pool) as port:
                await _ready(port)
                counter = iter(range(10**9))

                def search() -> bytes:
                    return _request("GET", "/api/patients?limit=20", random.choice(tokens))

                def create() -> bytes:
                    n = next(counter)
                    body = orjson.dumps(
                        {
                            "given_name": random.choice(GIVEN),
                            "family_name": random.choice(FAMILY),
                            "birth_date": "1980-02-29",
                            "gender": "unknown",
                            "identifier": {"system": "urn:bench:new", "value": f"N{n}"},
                            "email": f"p{n}@example.com",
                        }
                    )
                    return _request("POST", "/api/patients", random.choice(tokens), body)

                phases = [Phase("GET /api/patients?limit=20"), Phase("POST /api/patients")]
                for phase, make in zip(phases, (search, create), strict=True):
                    await run_phase(
                        port,
                        phase,
                        make,
                        concurrency=args.concurrency,
                        warmup=args.warmup,
                        duration=args.duration,
                    )
                    print(report(phase), flush=True)
    finally:
        await drop(db)
    print(
        f"config: {os.cpu_count()} CPUs, {args.workers} uvicorn worker(s), pool {args.pool}, "
        f"{args.concurrency} connections, {args.duration:.0f} s per phase after "
        f"{args.warmup:.0f} s warm-up; load generator, service and Postgres on one host"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--scopes", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pool", type=int, default=10)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(args))
    except ImportError:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
