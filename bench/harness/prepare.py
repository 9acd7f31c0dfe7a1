"""Before any load: the stand-in tenants, the database and its data, and the tokens.

Signing 30,000 tokens takes about 25 s of CPU, so it runs in two processes while the
database is provisioned and loaded; the database is dropped on the way out (the caller's
`ExitStack`), whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import asyncpg

from app.core.db import asyncpg_dsn
from bench.auditlog.grow import grow
from bench.harness import data, proofs
from bench.harness.launch import base_env
from bench.harness.model import (
    AUDIENCE,
    CLIENT_ID,
    DOMAIN,
    REPO,
    TARGETS,
    TOKEN_TTL,
    Run,
    dpop_wanted,
)
from bench.kit.log import log
from bench.kit.loopback import free_port
from bench.kit.servers import Server
from bench.kit.tenant import write_config
from devkit.db import drop, provision
from devkit.keys import SigningKey, TokenMinter


def prepare(run: Run, stack: contextlib.ExitStack) -> None:
    """Database, data, tokens and one stand-in tenant per target."""
    args = run.args
    key = SigningKey.generate()
    config = run.run_dir / "tenant.json"
    write_config(
        config,
        key=key,
        domain=DOMAIN,
        audience=AUDIENCE,
        client_id=CLIENT_ID,
        secret=run.client_secret,
        session_secret=run.session_secret,
    )
    for target in TARGETS:  # one tenant each (same key), so its counts are that target's
        port = free_port()
        tenant = Server(
            f"tenant-{target}",
            [sys.executable, "-m", "bench.kit.tenant", str(config), str(port)],
            base_env(),
            port,
            1,
            run.run_dir / f"tenant-{target}.log",
            run.run_dir,
            ready_path="/dev/stats",
        )
        stack.callback(tenant.stop)
        tenant.start()
        run.tenants[target] = tenant
    run.git = git_state()
    if args.base is not None:
        run.base_git = git_state(args.base)

    users = data.make_users(args.users)
    minter = TokenMinter(DOMAIN, AUDIENCE, keys=[key])
    warm_claims = data.token_claims(minter, users, len(users), TOKEN_TTL)
    cold_wanted = "read_cold" in args.scenarios and "ours" in args.targets
    cold_claims = data.token_claims(
        minter, users, args.cold_tokens if cold_wanted else 0, TOKEN_TTL
    )
    processes = stack.enter_context(
        ProcessPoolExecutor(2, initializer=data.init_signer, initargs=(key.private_pem,))
    )
    processes.submit(int).result()  # fork the signers now, before any thread starts
    log(f"minting {len(warm_claims)} tokens and {len(cold_claims)} cold tokens (RS256)")
    threads = stack.enter_context(ThreadPoolExecutor(1))
    warm_future = threads.submit(data.mint, key, warm_claims, processes)
    cold_future = threads.submit(data.mint, key, cold_claims, processes)
    dpop_claims = data.token_claims(minter, users, len(users), TOKEN_TTL)
    dpop_future = (
        threads.submit(proofs.make_clients, key, dpop_claims, processes)
        if dpop_wanted(args)
        else None
    )

    log(f"provisioning a database on {args.admin_url.rsplit('@', 1)[-1]}")
    run.db = asyncio.run(provision(args.admin_url, f"bench_{run.run_id}"))
    db = run.db
    stack.callback(lambda: asyncio.run(drop(db)))
    if args.db_role_setting:
        asyncio.run(role_settings(db.admin_url, db.name, db.app_role, args.db_role_setting))
        log(f"  the app role's sessions in this database: {', '.join(args.db_role_setting)}")
    started = time.monotonic()
    run.server_version = asyncio.run(data.load(run.db.owner_url, users, args.patients))
    log(f"loaded {args.patients} patients in {len(users)} scopes in "
        f"{time.monotonic() - started:.1f}s")  # fmt: skip
    if args.audit_events:
        log(f"growing the audit log by {args.audit_events:,} events (COPY, as the owner)")
        run.audit_grown = asyncio.run(
            grow(
                run.db.owner_url,
                args.audit_events,
                exclude_scopes={user.scope for user in users},
                indexes=args.audit_indexes,
                log=log,
            )
        )
        log(run.audit_grown.text())

    if any(item.startswith("AUDIT_SIGNING_KEY=") for item in args.service_env):
        signing_ready(run)

    warm = warm_future.result()
    run.warm_tokens = run.run_dir / "tokens.tsv"
    data.write_tokens(str(run.warm_tokens), warm, warm_claims)
    run.first_token = warm[0]
    run.first_scope = users[0].scope
    cold = cold_future.result()
    parts = len(args.connections) * args.rounds  # never-seen tokens for every cold cell
    share = len(cold) // parts
    for n in range(parts):
        path = run.run_dir / f"cold-{n}.tsv"
        data.write_tokens(str(path), cold[n * share : (n + 1) * share],
                          cold_claims[n * share : (n + 1) * share])  # fmt: skip
        run.cold_tokens.append(path)
    if dpop_future is not None:
        run.dpop = dpop_future.result()
    log(f"tokens ready ({share} cold tokens per cold run)")


async def role_settings(admin_url: str, name: str, role: str, settings: list[str]) -> None:
    """`--db-role-setting NAME=VALUE`: a server setting for every session of the app role
    (all targets) in this run's database, for a diagnostic run."""
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        for item in settings:
            setting, value = item.split("=", 1)
            if not setting.replace("_", "").isalnum():
                raise SystemExit(f"--db-role-setting: not a setting name: {setting!r}")
            # Names cannot be bound parameters: the role and database are generated here,
            # the setting checked above, the value quoted by Postgres.
            literal = await admin.fetchval("SELECT quote_literal($1::text)", value)
            await admin.execute(
                f'ALTER ROLE "{role}" IN DATABASE "{name}" SET {setting} = {literal}'
            )
    finally:
        await admin.close()


def git_state(repo: Path = REPO) -> str:
    """The commit measured, and whether the working tree had changes on top of it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "app", "migrations"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "?"
    return f"{head or '?'}{' + uncommitted changes in app/ or migrations/' if dirty.stdout else ''}"


def signing_ready(run: Run) -> None:
    """With a signing key among the service's settings (the digest issuer on), do what an
    operator does before the first digest: register the key as the migrations owner, and
    bring a grown log into the Merkle trees, so the run measures the issuer's steady work
    (extending the trees by the events since its last digest), not the backlog."""
    assert run.db is not None
    env = base_env() | {"DATABASE_URL": run.db.app_url, "MIGRATIONS_DATABASE_URL": run.db.owner_url}
    env |= dict(item.split("=", 1) for item in run.args.service_env)
    steps = [["audit", "register-key"]]
    if run.args.audit_events:
        steps.append(["audit", "build-trees"])
    for step in steps:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "app", *step], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"`python -m app {' '.join(step)}` failed: {done.stderr[-500:]}")
        log(f"  {' '.join(step)} in {time.monotonic() - started:.1f}s (the issuer's set-up)")
