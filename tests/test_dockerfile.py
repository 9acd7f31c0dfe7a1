"""Docker cannot run here, so check what we can: the Dockerfile's COPY sources exist, and the
command it runs starts the service, which answers /healthz and exits cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from app.dev.db import ProvisionedDatabase

ROOT = Path(__file__).resolve().parents[1]


def test_copy_sources_exist() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    copies = [
        line.split()[1:-1] for line in lines if line.startswith("COPY") and "--from=" not in line
    ]
    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), source


def test_image_command_runs_migrate_then_serve() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["sh", "-c", "python -m app migrate && exec python -m app serve"]' in text
    assert "USER bff" in text and "HEALTHCHECK" in text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_starts_answers_and_stops_on_sigterm(
    tmp_path: Path, database: ProvisionedDatabase
) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH0_", "DATABASE"))}
    env.update(
        {
            "DATABASE_URL": database.app_url,
            "AUTH0_DOMAIN": "tenant.example.com",
            "AUTH0_AUDIENCE": "https://api.example.com",
            "AUTH0_CLIENT_ID": "cid",
            "AUTH0_CLIENT_SECRET": "serve-secret",
            "AUTH0_BASE_URL": "http://127.0.0.1:9",
            "PORT": str(port),
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline and status is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/healthz", timeout=1
                ) as response:
                    status = response.status
                    server_header = response.headers.get("server")
            except OSError:
                time.sleep(0.2)
        assert status == 200, process.stderr.read() if process.poll() is not None else ""
        assert server_header is None  # no version banner
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    assert "serve-secret" not in stderr
