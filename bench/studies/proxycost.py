"""What a call through `/remote` costs the service's CPU, in process: the `proxy` scenario's
call (`GET /remote/bench/whoami` with a bearer token of the service's own audience) without
wrk, uvicorn's HTTP parsing or the load of the other processes.

    python -m bench.studies.proxycost [--calls 3000] [--rounds 3] [--loop uvloop|asyncio]
                                      [--profile out.prof]

Starts the stand-in tenant (bench/kit/tenant.py) and the stand-in upstream
(devkit/upstream.py under uvicorn) in processes of their own, so their CPU is not counted,
provisions a throwaway database (dropped at the end), builds the app with one route to the
upstream as the benchmark does (bench/harness/launch.py), and sends it `--calls` calls one
at a time straight through ASGI, timing each with `time.process_time()` (this process's
CPU, so other load on the machine does not count), under uvloop as production runs
unless `--loop asyncio`. The access log goes to /dev/null as
JSON lines, as in production. Prints the median and the mean per call in µs; figures only,
it asserts nothing. With `--profile`, the last round runs under cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from asgi_lifespan import LifespanManager

from app.core.logs import configure_logging
from app.core.settings import Settings
from app.main import create_app
from bench.harness.model import (
    AUDIENCE,
    CLIENT_ID,
    DOMAIN,
    PROXY_PATH,
    PROXY_ROUTE,
    REPO,
    UNREACHABLE_LIMIT,
)
from bench.kit.loopback import LOOPBACK, free_port
from bench.kit.tenant import write_config
from devkit.db import LOCAL_SERVER_URL, drop, provision
from devkit.keys import SigningKey, TokenMinter

SECRET = "proxycost-m2m-secret"


def _wait_for_port(port: int, seconds: float = 20) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def _process(argv: list[str], port: int) -> Iterator[None]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        yield
    finally:
        child.terminate()
        child.wait(timeout=10)


@contextlib.contextmanager
def _peers(key: SigningKey, directory: Path) -> Iterator[tuple[str, str]]:
    """The stand-in tenant and upstream, each in a process of its own: their URLs."""
    config = directory / "tenant.json"
    write_config(
        config, key=key, domain=DOMAIN, audience=AUDIENCE, client_id=CLIENT_ID, secret=SECRET
    )
    tenant_port, upstream_port = free_port(), free_port()
    tenant = [sys.executable, "-m", "bench.kit.tenant", str(config), str(tenant_port)]
    upstream = [sys.executable, "-m", "uvicorn", "devkit.upstream:app", "--no-access-log",
                "--loop", "uvloop", "--http", "httptools", "--host", LOOPBACK,
                "--port", str(upstream_port)]  # fmt: skip
    with _process(tenant, tenant_port), _process(upstream, upstream_port):
        yield f"http://{LOOPBACK}:{tenant_port}", f"http://{LOOPBACK}:{upstream_port}"


def _settings(database: Any, tenant_url: str, upstream_url: str, directory: Path) -> Settings:
    table = directory / "remote-apis.json"
    route = {"upstream": upstream_url, "token": "user"}
    table.write_text(json.dumps({"apis": {PROXY_ROUTE: route}}))
    return Settings(
        _env_file=None,
        database_url=database.app_url,
        migrations_database_url=database.owner_url,
        auth0_domain=DOMAIN,
        auth0_audience=AUDIENCE,
        auth0_client_id=CLIENT_ID,
        auth0_client_secret=SECRET,
        auth0_base_url=tenant_url,
        app_secret_key="proxycost-app-secret-key-0123456789abcdef",
        remote_apis_file=str(table),
        public_url="http://127.0.0.1:8000",
        # All the calls come from one address and 50 users: never refused, as in the bench.
        rate_limit_per_ip=UNREACHABLE_LIMIT,
        rate_limit_per_user=UNREACHABLE_LIMIT,
    )


def _scope(token: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": PROXY_PATH,
        "raw_path": PROXY_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"wrk"),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _call(app: Any, token: str) -> int:
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(token), receive, send)
    return status


async def _round(app: Any, tokens: list[str], calls: int) -> list[float]:
    spent = []
    for n in range(calls):
        started = time.process_time()
        status = await _call(app, tokens[n % len(tokens)])
        spent.append(time.process_time() - started)
        if status != 200:
            raise RuntimeError(f"call {n} answered {status}")
    return spent


@contextlib.asynccontextmanager
async def _app(settings: Settings) -> AsyncIterator[Any]:
    async with LifespanManager(create_app(settings)) as manager:
        yield manager.app


async def _study(args: argparse.Namespace) -> None:
    key = SigningKey.generate()
    minter = TokenMinter(DOMAIN, AUDIENCE, keys=[key])
    tokens = [minter.mint(f"auth0|proxycost-{n}") for n in range(50)]
    database = await provision(LOCAL_SERVER_URL)
    try:
        with tempfile.TemporaryDirectory() as tmp, _peers(key, Path(tmp)) as (tenant, upstream):
            settings = _settings(database, tenant, upstream, Path(tmp))
            async with _app(settings) as app:
                await _round(app, tokens, 200)  # JWKS fetched, connections open, caches warm
                for round_ in range(args.rounds):
                    profiler = (
                        cProfile.Profile() if args.profile and round_ == args.rounds - 1 else None
                    )
                    if profiler is not None:
                        profiler.enable()
                    spent = await _round(app, tokens, args.calls)
                    if profiler is not None:
                        profiler.disable()
                        profiler.dump_stats(args.profile)
                    median = statistics.median(spent) * 1e6
                    mean = statistics.fmean(spent) * 1e6
                    print(f"round {round_ + 1}: {args.calls} calls  median {median:7.1f} µs"
                          f"   mean {mean:7.1f} µs", flush=True)  # fmt: skip
    finally:
        await drop(database)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default=None, help="write the last round's cProfile here")
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    args = parser.parse_args()
    configure_logging("INFO")
    devnull = open(os.devnull, "w")  # noqa: SIM115 (open while the study runs)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    factory = None
    if args.loop == "uvloop":  # as production runs (`python -m app serve`)
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_study(args))


if __name__ == "__main__":
    main()
