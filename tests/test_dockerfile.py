"""Docker cannot build here, so check what we can: the Dockerfile's COPY sources exist and
.dockerignore keeps everything else out of the build context; the package the build stage
installs (`pip install .` of those sources, not editable) holds no development module, and
installed so it is a service that starts, answers /healthz (the image's own HEALTHCHECK
command, on the port PORT names) and exits cleanly on SIGTERM, while `dev` says in one line
that it is not there."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devkit.db import ProvisionedDatabase

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line for line in joined.splitlines() if line and not line.startswith("#")]


def _ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's matching, as far as these patterns need: `**/` is any depth, last match wins."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        candidates = [pattern, pattern.removeprefix("**/")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        names = parts if pattern.startswith("**/") else []
        if any(fnmatch.fnmatch(p, c) for c in candidates for p in prefixes + names):
            ignored = not negated
    return ignored


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    copies = [
        line.split()[1:-1]
        for line in _instructions()
        if line.startswith("COPY") and "--from=" not in line
    ]
    assert copies
    patterns = _ignore_patterns()
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not _ignored(source, patterns), source
    assert not _ignored("app/core/db.py", patterns)
    assert not _ignored("migrations/0001_foundation.sql", patterns)


def test_dockerignore_leaves_out_the_venv_history_secrets_and_caches() -> None:
    patterns = _ignore_patterns()
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "tests/test_cli.py",
        "bench/harness/runner.py",
        "docs/benchmarks.md",
        "app/__pycache__/main.cpython-311.pyc",
        "app/core/__pycache__/db.cpython-311.pyc",
        "app/stray.pyc",
        ".mypy_cache/3.11/app",
        ".ruff_cache/content",
        ".pytest_cache/v",
        "auth0_bff.egg-info/PKG-INFO",
    ]:
        assert _ignored(path, patterns), path


def test_image_command_runs_migrate_then_serve() -> None:
    assert 'CMD ["sh", "-c", "python -m app migrate && exec python -m app serve"]' in DOCKERFILE
    assert "USER bff" in DOCKERFILE


def _healthcheck() -> list[str]:
    [line] = [line for line in _instructions() if line.startswith("HEALTHCHECK")]
    command: list[str] = json.loads(line.split(" CMD ", 1)[1])
    return command


def test_healthcheck_reads_port_from_the_environment() -> None:
    command = _healthcheck()
    assert command[:2] == ["python", "-c"]
    assert "os.environ['PORT']" in command[2]
    assert "8000" not in command[2]
    assert "PORT=8000" in DOCKERFILE  # the image's default, which the probe then follows


def _build_stage_install() -> list[str]:
    """The build stage's `pip install` of the copied sources, as an argument list."""
    [run] = [line for line in _instructions() if line.startswith("RUN") and line.endswith(" .")]
    command = run.removeprefix("RUN ").split("&&")[-1].split()
    assert command[:3] == ["/opt/venv/bin/pip", "install", "--no-cache-dir"], run
    assert command[-1] == "." and "-e" not in command and "--editable" not in command
    return command


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as the image holds it: the Dockerfile's COPY sources in a build directory,
    installed from there (not editable) into a site-packages of their own."""
    build = tmp_path_factory.mktemp("build")
    site = tmp_path_factory.mktemp("site-packages")
    for line in _instructions():
        if line.startswith("COPY") and "--from=" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                if (ROOT / source).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                    shutil.copytree(ROOT / source, build / source, ignore=ignore)
                else:
                    shutil.copy(ROOT / source, build / source)
    install = _build_stage_install()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            *install[1:-1],
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--target",
            str(site),
            str(build),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return site


def test_the_built_package_holds_no_development_module(image_site: Path) -> None:
    top = sorted(path.name for path in image_site.iterdir())
    assert [name for name in top if not name.endswith(".dist-info")] == ["app"]
    installed = [p.relative_to(image_site).as_posix() for p in image_site.rglob("*")]
    assert "app/main.py" in installed and "app/core/db.py" in installed
    assert not [p for p in installed if "devkit" in p or p.startswith("app/dev")]
    assert "rmtree" not in DOCKERFILE  # nothing is built only to be deleted


# `python -m app ARGS` as the image runs it: this checkout's editable install adds an import
# hook that would find this checkout's `app` behind the copy's back, so it is taken out first.
_AS_IN_IMAGE = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.argv[0] = "app"
runpy.run_module("app", run_name="__main__", alter_sys=True)
"""


def _app_command(*args: str) -> list[str]:
    return [sys.executable, "-c", _AS_IN_IMAGE, *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _image_env(site: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH0_", "DATABASE", "MIGRATIONS_D"))
        and k not in {"HOST", "PORT", "WORKERS"}
    }
    env.update({"PYTHONPATH": str(site), "MIGRATIONS_DIR": str(ROOT / "migrations")})
    return env


def test_dev_is_not_in_the_image(image_site: Path) -> None:
    site = image_site
    result = subprocess.run(
        _app_command("dev"),
        cwd=site,
        env=_image_env(site),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: `dev` is not part of this installation (the image carries `serve` only)"
    )
    assert result.stdout == ""


def test_migrate_in_a_copy_without_its_migrations_says_where_it_looked(
    image_site: Path,
) -> None:
    site = image_site
    env = _image_env(site)
    del env["MIGRATIONS_DIR"]  # as a `pip install .` elsewhere would run it
    result = subprocess.run(
        _app_command("migrate"),
        cwd=site,
        env={**env, "DATABASE_URL": "postgresql://u@127.0.0.1:1/d"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: configuration error: no migrations at {site / 'migrations'}; "
        "set MIGRATIONS_DIR to the migrations/ directory of this release"
    )


def _probe(port: int) -> int:
    """The image's HEALTHCHECK command, with PORT set as the container would have it."""
    return subprocess.run(
        _healthcheck(),
        env={**os.environ, "PORT": str(port)},
        capture_output=True,
        timeout=30,
        check=False,
        executable=sys.executable,
    ).returncode


def test_serve_without_devkit_answers_the_healthcheck_and_stops_on_sigterm(
    image_site: Path, database: ProvisionedDatabase
) -> None:
    site = image_site
    port = _free_port()
    env = _image_env(site)
    env.update(
        {
            "DATABASE_URL": database.app_url,
            "AUTH0_DOMAIN": "tenant.example.com",
            "AUTH0_AUDIENCE": "https://api.example.com",
            "AUTH0_CLIENT_ID": "cid",
            "AUTH0_CLIENT_SECRET": "serve-secret",
            "AUTH0_BASE_URL": "http://127.0.0.1:9",
            "APP_SECRET_KEY": "serve-app-secret-key-0123456789abcdef",
            "PORT": str(port),
        }
    )
    process = subprocess.Popen(
        _app_command("serve"),
        cwd=site,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and status is None and process.poll() is None:
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
        assert _probe(port) == 0  # the HEALTHCHECK, on the port PORT names
        assert _probe(_free_port()) != 0  # and it does look there: nothing listens here
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    assert "serve-secret" not in stderr and "serve-app-secret-key" not in stderr
    assert "app/dev" not in stderr and "devkit" not in stderr
