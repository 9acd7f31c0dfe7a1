"""The command line: one readable line and a non-zero exit for every configuration mistake."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.dev.db import ProvisionedDatabase

AUTH0 = {
    "AUTH0_DOMAIN": "tenant.example.com",
    "AUTH0_AUDIENCE": "https://api.example.com",
    "AUTH0_CLIENT_ID": "cid",
    "AUTH0_CLIENT_SECRET": "cli-secret-value",
}


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH0_", "DATABASE_URL", "MIGRATIONS_DATABASE_URL"))
    }
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_migrate_twice_is_a_no_op_the_second_time(
    tmp_path: Path, database: ProvisionedDatabase
) -> None:
    # The cloned database is already migrated, so even the first run applies nothing new.
    first = run_cli(
        tmp_path,
        "migrate",
        DATABASE_URL=database.app_url,
        MIGRATIONS_DATABASE_URL=database.owner_url,
    )
    second = run_cli(
        tmp_path,
        "migrate",
        DATABASE_URL=database.app_url,
        MIGRATIONS_DATABASE_URL=database.owner_url,
    )
    assert first.returncode == second.returncode == 0, first.stderr
    assert second.stdout.strip() == "applied 0 migration(s)"


def test_migrate_without_database_url_names_it(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "migrate")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: configuration error: missing required setting(s): DATABASE_URL"
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"DATABASE_URL": "postgresql://u@127.0.0.1/d"},
            "error: configuration error: missing required setting(s): AUTH0_DOMAIN, "
            "AUTH0_AUDIENCE, AUTH0_CLIENT_ID, AUTH0_CLIENT_SECRET",
        ),
        (
            {**AUTH0, "DATABASE_URL": "not a url"},
            "error: configuration error: invalid setting(s): DATABASE_URL: "
            "DATABASE_URL must be a postgresql:// URL",
        ),
        (
            {
                **{k: v for k, v in AUTH0.items() if k != "AUTH0_DOMAIN"},
                "DATABASE_URL": "postgresql://u@127.0.0.1/d",
            },
            "error: configuration error: missing required setting(s): AUTH0_DOMAIN",
        ),
    ],
)
def test_serve_with_bad_configuration_is_one_line(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    result = run_cli(tmp_path, "serve", **env)
    assert result.returncode == 2
    assert result.stderr.strip() == expected
    assert "cli-secret-value" not in result.stderr


def test_serve_with_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", **AUTH0, DATABASE_URL="postgresql://u@127.0.0.1:1/d")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: database unreachable at 127.0.0.1:1/d")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["serve", "dev"])
def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path: Path, command: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        unreachable = {**AUTH0, "DATABASE_URL": "postgresql://u@127.0.0.1:1/d"}
        env = unreachable if command == "serve" else {}
        result = run_cli(tmp_path, command, "--port", str(port), **env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
        " (is another server running there? choose another with --port or PORT)"
    ]
    # Checked first: before the database (serve), before the embedded Postgres and the
    # banner with a token (dev).
    assert result.stdout == ""


def test_audit_partitions_command(tmp_path: Path, database: ProvisionedDatabase) -> None:
    result = run_cli(
        tmp_path, "audit", "partitions", "--months", "5", DATABASE_URL=database.owner_url
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "created 2 audit partition(s) covering the next 5 month(s)"
