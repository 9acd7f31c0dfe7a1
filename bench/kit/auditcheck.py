"""After a failover: are the audit chains intact, and does an auditor's export verify
offline? The chains are walked in the database (`app.audit.verify.verify_chain`, as
`GET /api/audit-events/verify` does); the export is fetched as docs/audit.md tells an
auditor to (events, every digest page, the keys) after `python -m app audit digest` signed
the heads, and checked by `python -m app audit verify-export`."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from app.audit.verify import verify_chain
from app.core.db import asyncpg_dsn
from bench.kit.loopback import http_call


@dataclass(frozen=True)
class Chains:
    scopes: int
    events: int
    broken: list[str]


async def verify_chains(owner_url: str, since: dt.datetime) -> Chains:
    until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    conn = await asyncpg.connect(asyncpg_dsn(owner_url))
    try:
        scopes = [r["scope"] for r in await conn.fetch("SELECT scope FROM audit_chain_heads")]
        events, broken = 0, []
        for scope in scopes:
            report = await verify_chain(conn, scope, since, until)
            events += report.count
            if report.status != "intact":
                broken.append(f"{scope}: {report.reason}")
    finally:
        await conn.close()
    return Chains(len(scopes), events, broken)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verify_export(
    base_url: str, token: str, env: dict[str, str], directory: Path, since: dt.datetime
) -> tuple[bool, str]:
    """(intact, the verifier's line) for the export of `token`'s scope since `since`."""
    signed = subprocess.run(
        [sys.executable, "-m", "app", "audit", "digest"],
        env=env,
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if signed.returncode != 0:
        return False, f"no digest: {signed.stderr.strip()[-300:]}"
    auth = {"Authorization": f"Bearer {token}"}
    until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    query = f"format=ndjson&since={_iso(since)}&until={_iso(until)}"
    status, events = http_call(f"{base_url}/api/audit-events/export?{query}", headers=auth)
    if status != 200:
        return False, f"export answered {status}"
    lines: list[bytes] = []
    cursor = ""
    while True:
        page_url = f"{base_url}/api/audit-events/digests?limit=200" + (
            f"&cursor={cursor}" if cursor else ""
        )
        status, page = http_call(page_url, headers=auth)
        if status != 200:
            return False, f"digests answered {status}"
        body = json.loads(page)
        lines += [json.dumps(item).encode() + b"\n" for item in body["items"]]
        cursor = body.get("next_cursor") or ""
        if not cursor:
            break
    status, keys = http_call(f"{base_url}/.well-known/audit-keys")
    if status != 200:
        return False, f"keys answered {status}"
    paths = {name: directory / name for name in ("events.ndjson", "digests.ndjson", "keys.json")}
    paths["events.ndjson"].write_bytes(events)
    paths["digests.ndjson"].write_bytes(b"".join(lines))
    paths["keys.json"].write_bytes(keys)
    verdict = subprocess.run(
        [
            sys.executable,
            *("-m", "app", "audit", "verify-export"),
            *("--events", str(paths["events.ndjson"])),
            *("--digests", str(paths["digests.ndjson"])),
            *("--keys", str(paths["keys.json"])),
        ],
        env=env,
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    line = (verdict.stdout or verdict.stderr).strip().splitlines()
    return verdict.returncode == 0, line[0] if line else "(no output)"
