"""`python -m app dev` makes an audit signing key and a scope key, registers the signing
key as the database's owner, hands both to the app it runs, and the app signs its first
digest at start and publishes the key."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import orjson

from devkit.db import ProvisionedDatabase


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_dev_signs_digests_with_a_key_of_its_own(
    tmp_path: Path, database: ProvisionedDatabase, owner: asyncpg.Connection
) -> None:
    port = _free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AUTH0_", "AUDIT_", "DATABASE_"))
    }
    env |= {"DATABASE_URL": database.app_url, "MIGRATIONS_DATABASE_URL": database.owner_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "app", "dev", "--port", str(port)),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            if line.strip().startswith(b"curl -H") or not line:
                break
        url = f"http://127.0.0.1:{port}/.well-known/audit-keys"
        async with httpx.AsyncClient() as http:
            keys = (await http.get(url, timeout=10)).json()["keys"]
        assert [(k["kty"], k["crv"], k["kid"][:4]) for k in keys] == [("OKP", "Ed25519", "dev-")]
        for _ in range(100):
            stored = await owner.fetchrow("SELECT kid, jws FROM audit_digests WHERE number = 1")
            if stored is not None:
                break
            await asyncio.sleep(0.1)
        assert stored is not None and stored["kid"] == keys[0]["kid"]
        segment = stored["jws"].split(".")[1]
        payload = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        assert (payload["v"], payload["scope_key"][:4]) == (2, "dev-")  # a scope key of its own
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
