"""Archiving a month, and reading the archives back offline, runs in flat memory: a month
of four times the events takes about the same peak, whatever the month's size (a month
of millions of events must not be held in memory, by `archive`, `verify-archives` or
`access-report`). The pages are made small so that a few thousand events show it."""

from __future__ import annotations

import io
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
import pytest

from app.audit import archive
from app.audit.archive import archive_month, plan
from app.audit.sealed import patient_report, verify_archives
from devkit.db import ProvisionedDatabase
from tests.audit.archives import LAST_MONTH, MONTH_BEFORE, THIS_MONTH, bulk_month
from tests.audit.tamper import RING, issue

T = TypeVar("T")
EVENTS = 3_000  # the smaller month's; the larger has four times as many
PAGE = 100  # events per query, as written and as read back
PATIENT = uuid.uuid4()


async def _peak(work: Awaitable[T]) -> tuple[int, T]:
    """The most memory Python held at once while `work` ran, beyond what it held before."""
    tracemalloc.start()
    try:
        done = await work
        return tracemalloc.get_traced_memory()[1], done
    finally:
        tracemalloc.stop()


def _peak_of(work: Callable[..., T], *args: Any) -> tuple[int, T]:
    tracemalloc.start()
    try:
        done = work(*args)
        return tracemalloc.get_traced_memory()[1], done
    finally:
        tracemalloc.stop()


class _Discard(io.RawIOBase):
    """Where the report's lines go: counted by the report, kept by no one."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


@pytest.fixture
async def months(owner: asyncpg.Connection, database: ProvisionedDatabase) -> list[Any]:
    """The month before last: EVENTS events of two scopes; last month four times as many,
    of two other scopes (so each month's archive is a whole history on its own); one
    digest over them."""
    await bulk_month(owner, MONTH_BEFORE, ("org:small-1", "org:small-2"), EVENTS, PATIENT)
    await bulk_month(owner, LAST_MONTH, ("org:large-1", "org:large-2"), 4 * EVENTS, PATIENT)
    await issue(database)
    return await plan(owner, THIS_MONTH, datetime.now(UTC).date())


async def test_four_times_the_events_take_no_more_memory(
    owner: asyncpg.Connection,
    months: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(archive, "_PAGE", PAGE)
    monkeypatch.setattr(archive, "_BATCH", PAGE)
    assert [m.events for m in months] == [EVENTS, 4 * EVENTS]
    keys = tmp_path / "keys.json"
    keys.write_bytes(orjson.dumps({"keys": [RING.signer_jwk]}))
    written, verified, reported = [], [], []
    for month in months:
        directory = tmp_path / month.month
        directory.mkdir()
        peak, events = await _peak(archive_month(owner, month, directory, drop=True))
        assert events == month.events
        written.append(peak)
        peak, verdict = _peak_of(verify_archives, directory, keys)
        assert verdict.startswith(f"intact: {month.events} archived event(s) in 1 archive(s)")
        verified.append(peak)
        peak, report = _peak_of(patient_report, directory, PATIENT, None, _Discard())
        assert report.events == month.events // 10
        reported.append(peak)
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0  # both dropped
    for name, (small, large) in {"archive": written, "verify-archives": verified,
                                 "access-report": reported}.items():  # fmt: skip
        assert large < 1.5 * small, f"{name}: peak {large:,} B for 4x the events, {small:,} B"
