"""Docker cannot build here, so check what we can: the Dockerfile's COPY sources exist and
.dockerignore keeps everything else out of the build context; the package the build stage
installs (`pip install '.[redis]'` of those sources, not editable) holds no development
module, and installed so it is a service that starts, answers /healthz (the image's own
HEALTHCHECK command, on the port PORT names) and exits cleanly on SIGTERM, while `dev` says
in one line that it is not there. The image's entry commands run with `.env.example` as an
`--env-file`: `migrate` (a one-off, as the owner) finds its migrations and `serve` (the
image's CMD) listens on every address."""

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

from app.core.settings import Settings
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
        "deploy/alerts.yml",
        "app/__pycache__/main.cpython-311.pyc",
        "app/core/__pycache__/db.cpython-311.pyc",
        "app/stray.pyc",
        ".mypy_cache/3.11/app",
        ".ruff_cache/content",
        ".pytest_cache/v",
        "auth0_bff.egg-info/PKG-INFO",
    ]:
        assert _ignored(path, patterns), path


def _command() -> list[str]:
    [line] = [line for line in _instructions() if line.startswith("CMD ")]
    command: list[str] = json.loads(line.removeprefix("CMD "))
    return command


def test_image_command_serves_only() -> None:
    """Migrations need the owner's credentials, which the serving container must not hold:
    they are a one-off `docker run ... python -m app migrate` (README, Docker)."""
    assert _command() == ["python", "-m", "app", "serve"]
    assert "USER bff" in DOCKERFILE
    readme = (ROOT / "README.md").read_text()
    assert "docker run --rm --env-file owner.env auth0-bff python -m app migrate" in readme
    assert "--stop-timeout 30" in readme and "terminationGracePeriodSeconds: 30" in readme


def _image_environment() -> dict[str, str]:
    """The final stage's ENV, as `NAME=value` pairs."""
    [line] = [line for line in _instructions() if line.startswith("ENV ")]
    return dict(pair.split("=", 1) for pair in line.removeprefix("ENV ").split())


def test_env_example_leaves_what_the_image_sets_alone() -> None:
    """`docker run --env-file .env` puts every line of the file over the image's ENV, an empty
    value included: the example must assign none of what the image sets."""
    image = _image_environment()
    assert {"HOST", "PORT", "MIGRATIONS_DIR"} <= set(image)
    assert image["HOST"] == "0.0.0.0"
    assert set(image) & set(_env_file(ROOT / ".env.example")) == set()


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
    [run] = [line for line in _instructions() if line.startswith("RUN /opt/venv/bin/pip install")]
    command = run.removeprefix("RUN ").split("&&")[-1].split()
    assert command[:3] == ["/opt/venv/bin/pip", "install", "--no-cache-dir"], run
    assert command[-1] == "'.[redis]'" and "-e" not in command and "--editable" not in command
    return command


def test_the_image_has_the_redis_client_that_redis_url_needs() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extras["optional-dependencies"]["redis"] == ["redis>=5"]
    assert _build_stage_install()[-1] == "'.[redis]'"  # the package with that extra


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
    """This test run's environment without any setting, with the installed copy first."""
    settings = set(Settings.env_names())
    env = {k: v for k, v in os.environ.items() if k not in settings}
    env.update({"PYTHONPATH": str(site), "MIGRATIONS_DIR": str(ROOT / "migrations")})
    return env


def _env_file(path: Path) -> dict[str, str]:
    """A file as `docker run --env-file` reads it: `NAME=value` lines, the value taken
    literally (no quotes removed, an empty one kept), `#` lines and blank lines skipped."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


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
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
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


# --- The entry commands with .env.example as the --env-file ------------------------------


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback, if it has one (a UDP socket
    "connected" to TEST-NET-1 picks the interface a route would use; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(sock.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _listening_on(port: int) -> set[str]:
    """The IPv4 addresses a socket of this machine listens on at `port` (/proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _as_in_container(
    site: Path, srv: Path, env_file: dict[str, str], **docker_e: str
) -> dict[str, str]:
    """The environment of `docker run --env-file FILE [-e NAME=value] IMAGE`: the image's ENV
    (its /srv at `srv`), the file's lines over it, then the `-e` values."""
    image = {
        name: value.replace("/srv/", f"{srv}/")
        for name, value in _image_environment().items()
        if name != "PATH"
    }
    return {**_image_env(site), **image, **env_file, **docker_e}


def test_the_entry_commands_work_with_the_example_env_file(
    image_site: Path, database: ProvisionedDatabase, tmp_path: Path
) -> None:
    """`.env.example` copied as it is, but for what has no safe default (the database, the
    tenant, APP_SECRET_KEY and PUBLIC_URL): `migrate` as the one-off owner run finds the
    image's migrations, and the image's CMD listens on every address, not loopback only."""
    srv = tmp_path / "srv"
    shutil.copytree(ROOT / "migrations", srv / "migrations")  # COPY migrations /srv/migrations
    filled = {
        "DATABASE_URL": database.app_url,
        "AUTH0_DOMAIN": "tenant.example.com",
        "AUTH0_AUDIENCE": "https://api.example.com",
        "AUTH0_CLIENT_ID": "cid",
        "AUTH0_CLIENT_SECRET": "example-env-client-secret",
        "AUTH0_BASE_URL": "http://127.0.0.1:9",  # nothing listens: /healthz needs no tenant
        "APP_SECRET_KEY": "example-env-app-secret-key-0123456789",
        "PUBLIC_URL": "https://bff.example.com",
    }
    example = _env_file(ROOT / ".env.example")
    assert set(filled) <= set(example)
    serving = {**example, **filled}
    owner = {**serving, "MIGRATIONS_DATABASE_URL": database.owner_url}
    workdir = tmp_path / "workdir"  # the image's WORKDIR holds no .env
    workdir.mkdir()

    migrate = subprocess.run(
        _app_command("migrate"),
        cwd=workdir,
        env=_as_in_container(image_site, srv, owner),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert migrate.stdout.strip() == "applied 0 migration(s)"  # the fixture migrated it

    port = _free_port()
    command = _command()
    assert command[:3] == ["python", "-m", "app"]
    process = subprocess.Popen(
        _app_command(*command[3:]),
        cwd=workdir,
        env=_as_in_container(image_site, srv, serving, PORT=str(port)),  # as -e PORT=...
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None and _probe(port) != 0:
            time.sleep(0.2)
        assert _probe(port) == 0, process.stderr.read() if process.poll() is not None else ""
        assert "0.0.0.0" in _listening_on(port)
        address = _non_loopback_address()
        if address is not None:  # reached the way another container or the host would
            with urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=5) as answer:
                assert answer.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    assert "METRICS_TOKEN is unset: /metrics answers anyone who reaches this port" in stderr
    assert "example-env-client-secret" not in stderr and "example-env-app-secret" not in stderr
