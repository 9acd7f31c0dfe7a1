"""The README's first command: `python -m app dev` on a machine with nothing configured
starts a stand-in tenant, a throwaway Postgres and the service, and prints a curl line
that works, and a DPoP command that works."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dev_prints_a_curl_line_that_works(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH0_", "DATABASE_URL", "MIGRATIONS_DATABASE_URL"))
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        curl = dpop = None
        while time.monotonic() < deadline and (curl is None or dpop is None):
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            if line.strip().startswith("curl -H"):
                curl = line.strip()
            if line.strip().startswith("python -m devkit.dpop"):
                dpop = line.strip()
        assert curl is not None, "no curl line printed"
        assert dpop is not None, "no DPoP command printed"
        match = re.fullmatch(r'curl -H "Authorization: Bearer ([^"]+)" (\S+)', curl)
        assert match is not None, curl
        token, url = match.groups()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            body = orjson.loads(response.read())
        assert body["user_id"] == "auth0|dev-user"
        assert "read:patients" in body["permissions"]
        shown = subprocess.run(
            [sys.executable, *shlex.split(dpop)[1:]],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert shown.stdout.startswith("HTTP 200  (DPoP"), shown.stdout
        assert '"user_id":"auth0|dev-user"' in shown.stdout.replace(" ", "")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
