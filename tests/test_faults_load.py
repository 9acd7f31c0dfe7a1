"""Faults under load, short versions of `python -m bench.studies.faults` scenarios.

Each test starts the service as production runs it (`python -m app serve`), the stand-in
tenant and a database, drives a few seconds of load with `bench.kit.loadgen`, injects one fault
in the middle and asserts every criterion the scenario checks (see `bench/studies/faults.py`):
only documented statuses, 503s with `Retry-After`, bounded latency, recovery without a
restart, nothing stuck, and for writes a row and an audit event for every 201. Each takes
about 10 s; the longer runs and the soak are documented in docs/reliability.md.
"""

from __future__ import annotations

import pytest

from bench.kit.faultstack import Report
from bench.studies.faults import run_scenario

pytestmark = pytest.mark.slow  # about 10 s each: a service, a tenant and a database per test

SECONDS = 2.0
# A short breaker cool-down (10 s by default) so recovery fits in the test.
FAST_BREAKER = {"AUTH0_BREAKER_COOLDOWN_SECONDS": "1"}


def _assert_passed(report: Report) -> None:
    failed = [criterion for criterion, ok in report.checks if not ok]
    assert report.checks and not failed, report.render()


def test_postgres_restart_under_load_loses_nothing(postgres_server: str) -> None:
    # A private cluster, never the shared server; no initdb/pg_ctl is an error, not a skip.
    report = run_scenario("postgres-restart", SECONDS, postgres_server)
    _assert_passed(report)
    assert report.figures["rows lost"] == 0
    assert report.figures["still pending at the end"] == 0


@pytest.mark.parametrize("fault", ["slow", "down", "429"])
def test_tenant_fault_under_load(postgres_server: str, fault: str) -> None:
    report = run_scenario(f"tenant-{fault}", SECONDS, postgres_server, FAST_BREAKER)
    _assert_passed(report)
    assert report.figures["still pending at the end"] == 0


def test_jwks_rotation_under_load_no_401(postgres_server: str) -> None:
    report = run_scenario("jwks-rotation", 1.5, postgres_server)
    _assert_passed(report)


def test_jwks_rotation_to_an_unannounced_key_no_401(postgres_server: str) -> None:
    report = run_scenario("jwks-rotation-unannounced", 1.0, postgres_server)
    _assert_passed(report)


def test_sigterm_under_load_drains_and_exits_0(postgres_server: str) -> None:
    report = run_scenario("sigterm", SECONDS, postgres_server)
    _assert_passed(report)
    assert report.figures["exit code"] == 0


@pytest.mark.parametrize("scenario", ["sigterm-drain", "sigterm-drain-workers"])
def test_sigterm_with_a_drain_serves_through_it_then_exits_0(
    postgres_server: str, scenario: str
) -> None:
    report = run_scenario(scenario, SECONDS, postgres_server, {"SHUTDOWN_DRAIN_SECONDS": "2"})
    _assert_passed(report)
    assert report.figures["exit code"] == 0
