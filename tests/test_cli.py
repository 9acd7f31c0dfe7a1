"""The command line: one readable line and a non-zero exit for every configuration mistake."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.__main__ import build_parser
from app.core.db import MIGRATIONS_DIR
from devkit.db import ProvisionedDatabase

AUTH0 = {
    "AUTH0_DOMAIN": "tenant.example.com",
    "AUTH0_AUDIENCE": "https://api.example.com",
    "AUTH0_CLIENT_ID": "cid",
    "AUTH0_CLIENT_SECRET": "cli-secret-value",
}
SECRET_KEY = "cli-app-secret-key-0123456789abcdef"
# `serve` needs the origin it builds links from, and the service's own secret.
REQUIRED = {**AUTH0, "APP_SECRET_KEY": SECRET_KEY, "PUBLIC_URL": "https://bff.example.com"}
SERVE = REQUIRED


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH0_", "DATABASE_URL", "MIGRATIONS_D"))
        and k not in {"HOST", "PORT", "WORKERS", "LOG_LEVEL", "PUBLIC_URL", "APP_SECRET_KEY"}
        and k != "REDIS_URL"
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
            {"DATABASE_URL": "postgresql://u@127.0.0.1/d", "APP_SECRET_KEY": SECRET_KEY},
            "error: configuration error: missing required setting(s): AUTH0_DOMAIN, "
            "AUTH0_AUDIENCE, AUTH0_CLIENT_ID, AUTH0_CLIENT_SECRET",
        ),
        (
            {**REQUIRED, "DATABASE_URL": "not a url"},
            "error: configuration error: invalid setting(s): DATABASE_URL: "
            "DATABASE_URL must be a postgresql:// URL",
        ),
        (
            {
                **{k: v for k, v in REQUIRED.items() if k != "AUTH0_DOMAIN"},
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


def test_serve_without_public_url_names_it_before_anything_starts(tmp_path: Path) -> None:
    # Every absolute link (FHIR's `next`, the sign-in callback) is built from it, never
    # from a request's Host header.
    with socket.socket() as busy:  # checked before the port and the database
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = run_cli(
            tmp_path,
            "serve",
            "--port",
            port,
            **AUTH0,
            APP_SECRET_KEY=SECRET_KEY,
            DATABASE_URL="postgresql://u@127.0.0.1:1/d",
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: configuration error: missing required setting(s): PUBLIC_URL"
    )
    assert result.stdout == ""
    (tmp_path / ".env").write_text("PUBLIC_URL=http://localhost\n")  # from .env too
    served = run_cli(
        tmp_path,
        "serve",
        "--port",
        str(_free_port()),
        **AUTH0,
        APP_SECRET_KEY=SECRET_KEY,
        DATABASE_URL="postgresql://u@127.0.0.1:1/d",
    )
    assert served.stderr.strip().startswith("error: database unreachable"), served.stderr


def test_serve_without_app_secret_key_is_one_line(tmp_path: Path) -> None:
    """No key is derived from another secret any more: rotating the M2M client secret must
    not move the key behind the audit log's email hashes and the cursors."""
    env = {
        **AUTH0,
        "PUBLIC_URL": "https://bff.example.com",
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/d",
    }
    for given in ({}, {"APP_SECRET_KEY": ""}):
        result = run_cli(tmp_path, "serve", **env, **given)
        assert result.returncode == 2
        assert result.stderr.strip() == (
            "error: configuration error: missing required setting(s): APP_SECRET_KEY"
        )
        assert result.stdout == ""


def test_serve_with_a_short_app_secret_key_is_one_line_that_never_quotes_it(
    tmp_path: Path,
) -> None:
    short = "short-key-9f3a1c"
    env = {**SERVE, "DATABASE_URL": "postgresql://u@127.0.0.1:1/d", "APP_SECRET_KEY": short}
    result = run_cli(tmp_path, "serve", **env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: configuration error: invalid setting(s): APP_SECRET_KEY: at least 32 "
        "characters (python -c 'import secrets; print(secrets.token_urlsafe(48))')"
    )
    assert short not in result.stderr


# `python -m app ARGS` in an installation without the redis package (the `redis` extra).
_WITHOUT_REDIS = """
import runpy, sys
sys.modules["redis"] = None  # import redis fails as if it were not installed
sys.argv[0] = "app"
runpy.run_module("app", run_name="__main__", alter_sys=True)
"""


def test_serve_with_redis_url_but_no_redis_package_is_one_line(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH0_", "DATABASE_URL", "MIGRATIONS_D", "REDIS_"))
    }
    env |= REQUIRED | {
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/d",
        "REDIS_URL": "redis://:redis-password-7c1e@redis.internal:6379/0",
    }
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_REDIS, "serve", "--port", str(_free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: configuration error: invalid setting(s): REDIS_URL: REDIS_URL is set but the "
        "redis package is not installed (pip install 'auth0-bff[redis]'; the image has it)"
    )
    assert "redis-password-7c1e" not in result.stderr


def test_serve_with_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", **REQUIRED, DATABASE_URL="postgresql://u@127.0.0.1:1/d")
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
        unreachable = {**REQUIRED, "DATABASE_URL": "postgresql://u@127.0.0.1:1/d"}
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


# --- HOST, PORT, WORKERS ------------------------------------------------------------------

UNREACHABLE = {**REQUIRED, "DATABASE_URL": "postgresql://u@127.0.0.1:1/d"}
PORT_NOT_A_NUMBER = (
    "error: configuration error: invalid setting(s): PORT: "
    "Input should be a valid integer, unable to parse string as an integer"
)


@pytest.mark.parametrize("command", ["serve", "dev"])
@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_port_that_is_not_a_number_is_one_line(tmp_path: Path, command: str, where: str) -> None:
    env = dict(UNREACHABLE) if command == "serve" else {}
    if where == ".env":
        (tmp_path / ".env").write_text("PORT=abc\n")
    else:
        env["PORT"] = "abc"
    result = run_cli(tmp_path, command, **env)
    assert result.returncode == 2
    assert result.stderr.strip() == PORT_NOT_A_NUMBER
    assert result.stdout == ""


def test_serve_listens_where_dotenv_says_and_the_command_line_overrides(
    tmp_path: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / ".env").write_text(f"PORT={port}\n")
        from_dotenv = run_cli(tmp_path, "serve", **UNREACHABLE)
        overridden = run_cli(tmp_path, "serve", "--port", str(_free_port()), **UNREACHABLE)
    # .env's PORT is the one it tried (before: ignored, 8000)...
    assert from_dotenv.returncode == 1
    assert from_dotenv.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    # ...and --port wins over it: the port is free, so it went on to the database.
    assert overridden.returncode == 1
    assert overridden.stderr.startswith("error: database unreachable at 127.0.0.1:1/d")


def test_serve_reads_host_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("HOST=192.0.2.1\n")  # TEST-NET-1: not an address of ours
    result = run_cli(tmp_path, "serve", "--port", str(_free_port()), **UNREACHABLE)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot listen on 192.0.2.1:")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "WORKERS: Input should be greater than or equal to 1"),
        ("many", "WORKERS: Input should be a valid integer, unable to parse string as an integer"),
    ],
)
def test_bad_workers_is_one_line(tmp_path: Path, value: str, expected: str) -> None:
    result = run_cli(tmp_path, "serve", **UNREACHABLE, WORKERS=value)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: configuration error: invalid setting(s): {expected}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "70000"], "argument --port: 70000 is not a port (1-65535)"),
        (["--port", "http"], "argument --port: 'http' is not a whole number"),
        (["--workers", "0"], "argument --workers: 0 must be at least 1"),
    ],
)
def test_bad_options_name_the_option(tmp_path: Path, args: list[str], expected: str) -> None:
    result = run_cli(tmp_path, "serve", *args, **UNREACHABLE)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"python -m app serve: error: {expected}"


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_option_says_its_default() -> None:
    parsers = list(_parsers(build_parser()))
    assert {p.prog for p in parsers} >= {
        "python -m app migrate",
        "python -m app serve",
        "python -m app dev",
        "python -m app audit partitions",
        "python -m app audit digest",
        "python -m app audit verify-export",
    }
    options = 0
    for parser in parsers:
        text = " ".join(parser.format_help().split())  # as printed, unwrapped
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            options += 1
            assert action.help, action.option_strings
            help_text = " ".join(action.help.split())
            assert help_text in text, (parser.prog, action.option_strings)
            printed = text[text.index(help_text) :]
            assert printed.startswith(help_text) and (
                "(default: " in printed.split(" --")[0] or "(required)" in help_text
            ), (parser.prog, action.option_strings, printed[:120])
    assert options >= 8


def test_serve_help_shows_the_settings_behind_its_defaults(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--host HOST address to listen on (default: HOST, else 127.0.0.1)" in text
    assert "--port PORT port to listen on (default: PORT, else 8000)" in text
    assert "--workers WORKERS worker processes (default: WORKERS, else 1)" in text


# --- Migration checksums -----------------------------------------------------------------


def test_an_edited_migration_stops_migrate_and_serve_in_one_line(
    tmp_path: Path, database: ProvisionedDatabase
) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    edited = next(copy.glob("0004_*.sql"))
    edited.write_text(edited.read_text() + "\n-- edited after it was applied\n")
    (copy / "9100_new.sql").write_text("CREATE TABLE cli_new_after_edit (id int);")
    env = {
        "DATABASE_URL": database.app_url,
        "MIGRATIONS_DATABASE_URL": database.owner_url,
        "MIGRATIONS_DIR": str(copy),
    }
    expected = (
        f"error: migration file(s) changed after they were applied: {edited.name} in {copy} "
        "(restore them; put a change in a new migration)"
    )

    migrated = run_cli(tmp_path, "migrate", **env)
    assert migrated.returncode == 1
    assert migrated.stderr.strip() == expected
    assert migrated.stdout == ""

    served = run_cli(tmp_path, "serve", "--port", str(_free_port()), **REQUIRED, **env)
    assert served.returncode == 1
    assert served.stderr.strip() == expected  # before uvicorn starts: nothing else printed

    # Nothing was applied; restored, the new file applies (MIGRATIONS_DIR from .env this time).
    edited.write_bytes((MIGRATIONS_DIR / edited.name).read_bytes())
    (tmp_path / ".env").write_text(f"MIGRATIONS_DIR={copy}\n")
    del env["MIGRATIONS_DIR"]
    again = run_cli(tmp_path, "migrate", **env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "applied 1 migration(s): 9100_new"


def test_a_missing_migrations_dir_is_one_line(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "migrate",
        DATABASE_URL="postgresql://u@127.0.0.1:1/d",
        MIGRATIONS_DIR=str(tmp_path / "nowhere"),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: configuration error: invalid setting(s): "
        f"MIGRATIONS_DIR: {tmp_path / 'nowhere'} is not a directory"
    )


# --- A quiet, readable dev console ------------------------------------------------------

READABLE = re.compile(r"\d\d:\d\d:\d\d (DEBUG|INFO |WARNING|ERROR|CRITICAL) \S+  \S.*")


def test_dev_console_is_quiet_and_readable_until_the_curl_line(tmp_path: Path) -> None:
    """Everything `python -m app dev` prints (stdout and stderr) from start to the curl line:
    ten lines or fewer, with the embedded Postgres (its INFO records, platformdirs' warning
    about XDG_RUNTIME_DIR), two uvicorn servers and the migrations all behind it."""
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH0_", "DATABASE_URL", "MIGRATIONS_D"))
        and k not in {"PORT", "LOG_LEVEL", "XDG_RUNTIME_DIR"}
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(120, process.kill)  # a hung start fails instead of hanging
    watchdog.start()
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while not (lines and lines[-1].lstrip().startswith("curl -H")):
            line = process.stdout.readline()
            assert line, "exited before the curl line:\n" + "".join(lines)
            lines.append(line)
        assert len(lines) <= 10, "".join(lines)
        token = re.search(r"Bearer ([^\"]+)", lines[-1])
        assert token is not None
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/me",
            headers={"Authorization": f"Bearer {token.group(1)}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    output = "".join(lines) + rest
    for noise in ("pgserver", "color_message", "\x1b[", "Warning", "Traceback", '{"ts"'):
        assert noise not in output, noise
    assert output.count("Started server process") == 0  # the banner says where things run
    logged = [line for line in output.splitlines() if READABLE.fullmatch(line)]
    # The request, as one readable line with its fields.
    assert any(
        " INFO  app.http.middleware  request " in line
        and "path=/api/me" in line
        and "status=200" in line
        for line in logged
    ), output
