"""The benchmark's cookie read: its options, its table against the 1.2x bound,
and the tenant table, which must not count the sessions' sign-ins as M2M tokens."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.__main__ import build_parser, finish_options
from bench.harness.model import Measurement, Run, Sample, TenantCounts
from bench.harness.report import cookie_table, tenant_table
from bench.kit.wrk import WrkResult


def _cell(scenario: str, requests: int, app_s: float) -> Measurement:
    result = WrkResult(requests, 5.0, 10.0, 20.0, 30.0, 40.0, 0, 0, 0, 1.0)
    return Measurement("ours", scenario, 1, 64, [Sample(result, app_s, 0.5, {})])


def _run(*cells: Measurement) -> Run:
    run = Run(argparse.Namespace(workers=[1], connections=[64]), Path("/nonexistent"))
    run.measurements.extend(cells)
    return run


def test_cookie_read_within_the_bound_is_met() -> None:
    # Bearer 200 req/s at 1,000 µs a read; cookie 180 req/s at 1,100 µs.
    lines = cookie_table(_run(_cell("read", 1000, 1.0), _cell("read_cookie", 900, 0.99)))
    assert lines[-1].startswith("| 1 | 64 | 200 / 180 | 1.11 met | 1,000 / 1,100 | 1.10 met")


def test_cookie_read_past_the_bound_is_missed() -> None:
    lines = cookie_table(_run(_cell("read", 1000, 1.0), _cell("read_cookie", 700, 0.91)))
    assert "| 1.43 MISSED |" in lines[-1] and "| 1.30 MISSED |" in lines[-1]


def test_no_cookie_read_no_table() -> None:
    assert cookie_table(_run(_cell("read", 1000, 1.0))) == []


def test_the_sessions_sign_ins_are_not_m2m_tokens() -> None:
    counts = {"oauth_token": 101, "code_grant": 100, "sign_in": 100, "jwks": 1, "get_user": 3}
    line = tenant_table([TenantCounts("ours", 1, 60.0, counts)])[-1]
    assert line == (
        "| ours | 1 | 60 | 1 | 0 | 1 | 3 | 0.05 | - | 1.0, 1.0 | within (JWKS ≤ 1, M2M ≤ 1) |"
    )


def test_the_management_api_budget_is_held_to_account() -> None:
    counts = {"oauth_token": 1, "jwks": 1, "get_user": 120, "management_busiest": 2}
    within = tenant_table([TenantCounts("ours", 1, 60.0, counts)], "2/1")[-1]
    assert "| 120 | 2.00 | 2 / 1 s |" in within
    assert within.endswith("| within (JWKS ≤ 1, M2M ≤ 1, ≤ 2 per 1 s) |")
    over = tenant_table([TenantCounts("ours", 1, 60.0, {**counts, "management_busiest": 3})], "2/1")
    assert over[-1].endswith("| EXCEEDED (JWKS ≤ 1, M2M ≤ 1, ≤ 2 per 1 s) |")


def test_sessions_option() -> None:
    args = finish_options(build_parser().parse_args(["--users", "50", "--sessions", "80"]))
    assert args.sessions == 50  # never more sessions than users
    assert "read_cookie" in finish_options(build_parser().parse_args([])).scenarios
    with pytest.raises(SystemExit, match="--sessions wants at least 1"):
        finish_options(build_parser().parse_args(["--sessions", "0"]))
