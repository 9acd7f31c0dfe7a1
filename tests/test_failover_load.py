"""Short versions of `python -m bench.failover` (bench/studies/failover.py): a Patroni
cluster behind HAProxy whose leader is killed and then switched back under load, the same
with a multi-host DATABASE_URL, and a rolling restart of three copies behind HAProxy. Each
asserts every criterion the run checks: only 503s while the primary moves, service back
within 10 s of the promotion, 0 acknowledged writes or audited reads missing, the chains
intact and an export verified offline, a logout spread to the other copy; 0 failed
requests through the rolling restart. Real processes only, all on 127.0.0.1; the Debian
packages they need (patroni, etcd-server, haproxy) are installed by .ci/run, and without
them these fail, they are not skipped."""

from __future__ import annotations

import asyncio

import pytest

from bench.kit.faultstack import Report
from bench.studies.failover import run
from bench.studies.rolling import rolling_restart

pytestmark = pytest.mark.slow  # a Patroni cluster and copies of the service: about 2 minutes

SECONDS = 2.0


def _assert_passed(report: Report) -> None:
    failed = [criterion for criterion, ok in report.checks if not ok]
    assert report.checks and not failed, report.render()


def test_a_killed_leader_and_a_switchover_lose_no_acknowledged_write(
    postgres_server: str,
) -> None:
    reports = run(["haproxy", "multi-host"], SECONDS, postgres_server)
    assert [r.scenario for r in reports] == ["failover-haproxy", "failover-multi-host"]
    for report in reports:
        _assert_passed(report)
        assert report.figures["acknowledged writes missing"].startswith("0 ")


def test_a_rolling_restart_behind_haproxy_fails_no_request(postgres_server: str) -> None:
    report = asyncio.run(rolling_restart(postgres_server, SECONDS))
    _assert_passed(report)
    assert report.figures["acknowledged writes missing"] == 0
