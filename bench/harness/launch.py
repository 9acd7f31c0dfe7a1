"""Each target's server: its command and environment, and the stand-in tenant's counts.

Ours runs as production runs it (`python -m app serve`), and so does `base` (`--base DIR`:
another checkout's service, e.g. the commit before a change), the peer and the floor under
uvicorn by import string (`bench.targets`); all three read the same database, and each
talks to a stand-in tenant of its own so that the tenant's counts are that target's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from app.core.settings import Quota
from bench.harness import data
from bench.harness.model import (
    AUDIENCE,
    CLIENT_ID,
    DOMAIN,
    PROXY_ROUTE,
    REPO,
    UNREACHABLE_LIMIT,
    Run,
    cookie_mode,
    proxy_wanted,
)
from bench.kit.loopback import LOOPBACK, free_port, http_call
from bench.kit.servers import Server
from bench.kit.tenant import SESSION_CLIENT_ID


def base_env() -> dict[str, str]:
    """This environment without any of the service's settings (and no `.env`: cwd is the
    run directory), so nothing from the shell changes what is measured."""
    import os

    from app.core.settings import Settings

    names = set(Settings.env_names())
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["PYTHONPATH"] = str(REPO)
    return env


def server_for(run: Run, target: str, workers: int) -> Server:
    tenant = run.tenants[target]
    assert run.db is not None
    port = free_port()
    env = base_env()
    common = ["--host", LOOPBACK, "--port", str(port), "--workers", str(workers)]
    uvicorn = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools"]
    if target in ("ours", "base"):
        argv = [sys.executable, "-m", "app", "serve", *common]
        if target == "base":  # the other checkout's app, with this one's packages
            env["PYTHONPATH"] = str(run.args.base)
        env |= {
            "DATABASE_URL": run.db.app_url,
            "MIGRATIONS_DATABASE_URL": run.db.owner_url,
            "AUTH0_DOMAIN": DOMAIN,
            "AUTH0_AUDIENCE": AUDIENCE,
            "AUTH0_CLIENT_ID": CLIENT_ID,
            "AUTH0_CLIENT_SECRET": run.client_secret,
            "APP_SECRET_KEY": "bench-app-secret-key-0123456789abcdef",
            "AUTH0_BASE_URL": tenant.url,
            "AUTH0_EMAIL_VERIFIED_CLAIM": data.EMAIL_VERIFIED_CLAIM,
            "LOG_LEVEL": "INFO",
            "DB_POOL_MAX_SIZE": str(run.args.pool_max),
            "AUTH0_MANAGEMENT_RATE": run.args.management_rate,
            # All the load comes from one address and 1,000 users: limits high enough never
            # to refuse, so the limiter's per-request check is measured but not its 429s.
            "RATE_LIMIT_PER_IP": UNREACHABLE_LIMIT,
            "RATE_LIMIT_PER_USER": UNREACHABLE_LIMIT,
            # Where the DPoP read's proofs point (their htu), as production configures it.
            "PUBLIC_URL": f"http://{LOOPBACK}:{port}",
            # The read_dpop proofs are made just before a run and must outlive it.
            "DPOP_IAT_LEEWAY_SECONDS": str(min(600, max(60, int(run.args.duration) + 30))),
        }
        if cookie_mode(run):  # on for every scenario of ours, so the reads compare alike
            env |= {
                "SESSION_CLIENT_ID": SESSION_CLIENT_ID,
                "SESSION_CLIENT_SECRET": run.session_secret,
                "SESSION_ENCRYPTION_KEY": run.session_key,
            }
        if proxy_wanted(run.args):
            env["REMOTE_APIS_FILE"] = str(_remote_apis(run))
        env |= dict(item.split("=", 1) for item in run.args.service_env)
        if target == "base":
            env |= dict(item.split("=", 1) for item in run.args.base_env)
    elif target == "peer":
        argv = [*uvicorn, "bench.targets.fastapi_auth0:app", *common]
        env |= {"AUTH0_DOMAIN": DOMAIN, "AUTH0_AUDIENCE": AUDIENCE}
    else:
        argv = [*uvicorn, "bench.targets.floor:app", "--no-access-log", *common]
    env |= {
        "BENCH_DATABASE_URL": run.db.app_url,
        "BENCH_TENANT_URL": tenant.url,
        "BENCH_POOL_MAX_SIZE": str(run.args.pool_max),
    }
    log_path = run.run_dir / f"{target}-w{workers}.log"
    return Server(target, argv, env, port, workers, log_path, run.run_dir)


def _remote_apis(run: Run) -> Path:
    """Ours' route table: one route to the upstream, with the caller's own token."""
    if not run.upstream_port:
        run.upstream_port = free_port()
    path = run.run_dir / "remote-apis.json"
    route = {"upstream": f"http://{LOOPBACK}:{run.upstream_port}", "token": "user"}
    path.write_text(json.dumps({"apis": {PROXY_ROUTE: route}}))
    return path


def upstream_server(run: Run, workers: int) -> Server:
    """The stand-in upstream (devkit/upstream.py) under uvicorn, as the peer runs."""
    if not run.upstream_port:
        run.upstream_port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools",
            "devkit.upstream:app", "--no-access-log", "--host", LOOPBACK,
            "--port", str(run.upstream_port), "--workers", str(workers)]  # fmt: skip
    log_path = run.run_dir / f"upstream-w{workers}.log"
    return Server(
        "upstream", argv, base_env(), run.upstream_port, workers, log_path, run.run_dir,
        ready_path="/status/200",
    )  # fmt: skip


def tenant_stats(run: Run, target: str) -> dict[str, int]:
    """The tenant's counts, and the most Management API calls that reached it within any
    window of ours' budget (`management_busiest`, over the tenant's life so far)."""
    if target not in run.tenants:  # the proxy's upstream talks to no tenant
        return {}
    window = Quota.parse(run.args.management_rate)
    query = f"?window={window.seconds}" if window else ""
    status, body = http_call(run.tenants[target].url + "/dev/stats" + query)
    return dict(json.loads(body)) if status == 200 else {}
