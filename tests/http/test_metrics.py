"""`/metrics`: the process and service metrics in one process, and with `--workers 2` the
sum of every worker in one scrape (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import respx
from databases import Database
from prometheus_client.parser import text_string_to_metric_families

from app.core import metrics
from app.core.db import connection
from app.core.settings import Settings
from app.http.middleware import Metrics
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import account_app, running_app
from tests.helpers import bearer, served_by_worker
from tests.patients.support import ALICE, ORG_A, create

HEALTHZ = {"method": "GET", "route": "/healthz", "status": "200"}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name` in an exposition, by its sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def healthz_count(text: str) -> float:
    return samples(text, "http_requests_total").get(tuple(sorted(HEALTHZ.items())), 0.0)


class TestOneProcess:
    SERVICE_FAMILIES = (
        "auth0_calls",
        "auth0_retries",
        "auth0_breaker_open",
        "m2m_token_fetches",
        "jwks_fetches",
        "audit_batch_size",
        "db_pool_connections_in_use",
        "revocations_live",
        "session_refreshes",
    )

    async def test_shows_process_python_request_and_service_metrics(
        self, client: httpx.AsyncClient
    ) -> None:
        await client.get("/healthz")
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        names = {family.name for family in text_string_to_metric_families(response.text)}
        assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names
        assert any(name.startswith("python_gc_") for name in names)
        assert set(self.SERVICE_FAMILIES) <= names
        assert healthz_count(response.text) == 1.0

    async def test_two_apps_in_one_process_count_their_own_requests(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        async with running_app(settings) as other:
            for _ in range(3):
                await other.get("/healthz")
            assert healthz_count((await other.get("/metrics")).text) == 3.0
        await client.get("/healthz")
        assert healthz_count((await client.get("/metrics")).text) == 1.0

    async def test_pool_connections_in_use_while_held(self, pool: Database) -> None:
        """What /metrics answers (no app here: its background tasks would use the pool)."""

        def in_use() -> float:
            return samples(Metrics().exposition().decode(), "db_pool_connections_in_use")[()]

        before = in_use()
        async with connection(pool), connection(pool):
            assert in_use() == before + 2
        assert in_use() == before


def value(text: str, name: str, **labels: str) -> float:
    return samples(text, name).get(tuple(sorted(labels.items())), 0.0)


class TestServiceMetrics:
    """The service's own metrics move with what the service does."""

    async def test_a_jwks_fetch_and_an_audit_batch(
        self, client: httpx.AsyncClient, tenant: respx.MockRouter, mint: Callable[..., str]
    ) -> None:
        token = bearer(mint(ALICE, org_id=ORG_A, email_verified=True))
        fetched = tenant.routes["jwks"].call_count
        before = (await client.get("/metrics")).text
        created = await create(client, token)  # the first token: the JWKS is fetched
        read = await client.get(f"/api/patients/{created['id']}", headers=token)
        assert read.status_code == 200  # a read: its audit record goes through a batch
        after = (await client.get("/metrics")).text

        fetches = tenant.routes["jwks"].call_count - fetched
        assert fetches >= 1
        for_ok = value(after, "jwks_fetches_total", outcome="ok")
        assert for_ok - value(before, "jwks_fetches_total", outcome="ok") == fetches
        batches = value(after, "audit_batch_size_count") - value(before, "audit_batch_size_count")
        requests = value(after, "audit_batch_size_sum") - value(before, "audit_batch_size_sum")
        assert (batches, requests) == (1, 1)

    async def test_where_a_read_spent_its_time(
        self,
        client: httpx.AsyncClient,
        tenant: respx.MockRouter,
        mint: Callable[..., str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        token = bearer(mint(ALICE, org_id=ORG_A, email_verified=True))
        created = await create(client, token)
        route = "/api/patients/{patient_id:uuid}"
        before = (await client.get("/metrics")).text
        with caplog.at_level("INFO", logger="app.http.middleware"):
            read = await client.get(f"/api/patients/{created['id']}", headers=token)
        assert read.status_code == 200
        await asyncio.sleep(0.25)  # the loop's lag is sampled every 0.1 s
        after = (await client.get("/metrics")).text
        phases = ("pool_wait", "page_query", "audit_wait", "send")
        counts = {
            phase: value(after, "http_request_phase_seconds_count", route=route, phase=phase)
            - value(before, "http_request_phase_seconds_count", route=route, phase=phase)
            for phase in phases
        }
        assert counts == dict.fromkeys(phases, 1)
        [logged] = [r for r in caplog.records if getattr(r, "route", None) == route]
        spent = logged.phases_ms  # type: ignore[attr-defined]
        assert set(spent) == set(phases) and all(ms >= 0 for ms in spent.values())
        assert sum(spent.values()) <= logged.duration_ms  # type: ignore[attr-defined]
        assert value(after, "event_loop_lag_seconds_count") > 0

    async def test_a_failed_jwks_fetch(
        self, client: httpx.AsyncClient, tenant: respx.MockRouter, mint: Callable[..., str]
    ) -> None:
        tenant.routes["jwks"].side_effect = None
        tenant.routes["jwks"].return_value = httpx.Response(500)
        fetched = tenant.routes["jwks"].call_count
        before = (await client.get("/metrics")).text
        refused = await client.get("/api/me", headers=bearer(mint(ALICE)))
        assert refused.status_code in (401, 503)
        after = (await client.get("/metrics")).text
        fetches = tenant.routes["jwks"].call_count - fetched
        assert fetches >= 1
        failed = value(after, "jwks_fetches_total", outcome="failed")
        assert failed - value(before, "jwks_fetches_total", outcome="failed") == fetches
        ok = value(after, "jwks_fetches_total", outcome="ok")
        assert ok == value(before, "jwks_fetches_total", outcome="ok")

    async def test_revocations_live_after_a_sign_out(
        self, settings: Settings, tenant: respx.MockRouter, mint: Callable[..., str]
    ) -> None:
        token = mint(sub="auth0|ada", jti="jti-1", sid="sid-1")
        async with account_app(settings) as running:
            before = (await running.http.get("/metrics")).text
            assert value(before, "revocations_live") == 0
            signed_out = await running.http.post("/api/logout", headers=bearer(token))
            assert signed_out.status_code == 204
            after = (await running.http.get("/metrics")).text
        assert value(after, "revocations_live") == 2  # the token's jti and its session


def _unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset the variable and have it unset again after the test, even if the code under
    test sets it (a bare delenv of an unset variable would restore nothing, and every later
    subprocess of the run would inherit the directory)."""
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "")
    monkeypatch.delenv(metrics.MULTIPROC_ENV)


class TestPrepareMultiprocess:
    def test_one_worker_and_no_directory_set_changes_nothing(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _unset(monkeypatch)
        assert metrics.prepare_multiprocess(1) is None
        assert metrics.MULTIPROC_ENV not in os.environ

    def test_several_workers_get_a_fresh_empty_directory(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _unset(monkeypatch)
        directory = metrics.prepare_multiprocess(2)
        try:
            assert directory is not None
            assert os.environ[metrics.MULTIPROC_ENV] == str(directory)
            assert directory.is_dir() and not any(directory.iterdir())
        finally:
            shutil.rmtree(directory or "", ignore_errors=True)

    def test_the_variable_does_not_outlive_the_test_above(self) -> None:
        assert metrics.MULTIPROC_ENV not in os.environ

    def test_a_directory_the_operator_set_is_emptied_of_old_values(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        (tmp_path / "counter_12345.db").write_bytes(b"old")
        (tmp_path / "keep.txt").write_text("not ours")
        monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
        assert metrics.prepare_multiprocess(2) == tmp_path
        assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


# --- python -m app serve --workers 2 -------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stale_values(directory: Path) -> Path:
    """A previous run's counter file: 1000 /healthz requests that must not be counted."""
    code = (
        "from prometheus_client import Counter\n"
        "c = Counter('http_requests', '', ['method', 'route', 'status'])\n"
        "c.labels('GET', '/healthz', '200').inc(1000)\n"
    )
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory)}
    before = set(directory.glob("counter_*.db"))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    (stale,) = set(directory.glob("counter_*.db")) - before
    return stale


@pytest.fixture
def two_workers(database: ProvisionedDatabase, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`python -m app serve --workers 2` on the test's database; yields (base URL, the
    metrics directory it was given)."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale = _stale_values(directory)
    port = _free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AUTH0_", "DATABASE", "PUBLIC_"))
    }
    env.update(
        {
            "DATABASE_URL": database.app_url,
            "AUTH0_DOMAIN": "tenant.example.com",
            "AUTH0_AUDIENCE": "https://api.example.com",
            "AUTH0_CLIENT_ID": "cid",
            "AUTH0_CLIENT_SECRET": "workers-secret",
            "APP_SECRET_KEY": "0123456789abcdef0123456789abcdef-test",
            "AUTH0_BASE_URL": "http://127.0.0.1:9",  # nothing listens: /healthz needs no Auth0
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            metrics.MULTIPROC_ENV: str(directory),
            # The rounds below may send more than the default 600 a minute from 127.0.0.1.
            "RATE_LIMIT_PER_IP": "off",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--workers", "2", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        # Both workers have imported the app: each made its own histogram file.
        while len(list(directory.glob("histogram_*.db"))) < 2:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        assert not stale.exists()  # emptied before the workers started
        while not _answers(f"{base}/openapi.json"):  # not /healthz: the test counts those
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the service did not answer"
            time.sleep(0.1)
        yield base, directory
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    assert "workers-secret" not in stderr


def _answers(url: str) -> bool:
    try:
        return _get(url) == 200
    except OSError:
        return False


def _get(url: str) -> int:
    """One request on a fresh connection (urllib never reuses one)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        status: int = response.status
        response.read()
    return status


def test_one_scrape_sums_every_worker(two_workers: tuple[str, Path]) -> None:
    base, directory = two_workers
    sent = 0
    deadline = time.monotonic() + 120  # a failsafe: the second worker may start late
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Rounds of 40 concurrent requests until each worker has served some of them.
        while time.monotonic() < deadline:
            assert set(pool.map(_get, [f"{base}/healthz"] * 40)) == {200}
            sent += 40
            served = served_by_worker(directory, "GET", "/healthz", 200)
            if len(served) == 2 and all(served.values()):
                break
    served = served_by_worker(directory, "GET", "/healthz", 200)
    assert len(served) == 2 and all(served.values()), served  # both workers served
    assert sum(served.values()) == sent

    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    assert healthz_count(text) == sent  # every worker's share, and no stale value
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"db_pool_connections_in_use", "audit_batch_size", "revocations_live"} <= names

    # A worker dies: the supervisor replaces it and drops its live gauges; its counts stay.
    dead = min(served)
    live_gauges = directory / f"gauge_livesum_{dead}.db"
    assert live_gauges.exists()
    os.kill(int(dead), signal.SIGKILL)
    while live_gauges.exists() or len(list(directory.glob("gauge_livesum_*.db"))) < 2:
        assert time.monotonic() < deadline, "the dead worker was not replaced"
        time.sleep(0.1)
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    assert healthz_count(text) == sent
    assert (directory / f"counter_{dead}.db").exists()
