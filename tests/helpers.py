"""What tests call to check a response or what was stored; fixtures live in `tests/fixtures/`."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

PROBLEM = "application/problem+json"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(
    response: httpx.Response,
    status: int,
    *fields: str,
    title: str | None = None,
    detail: str | None = None,
    request_id: bool = True,
    hides: Iterable[str] = (),
) -> dict[str, Any]:
    """Assert `response` is a problem+json error with `status`, and return its body.

    Always: the status code, the content type, and a body with `type`, `title`, `detail` and
    the same `status`. `fields`: exactly the fields its `errors` name. `title`/`detail`: equal
    to these. `request_id` (unless the app under test has no request-id middleware): the body's
    `request_id` is the response's `X-Request-Id`. `hides`: none of these strings appear.
    """
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys(), body
    if request_id:
        assert body["request_id"] == response.headers["x-request-id"]
    if title is not None:
        assert body["title"] == title
    if detail is not None:
        assert body["detail"] == detail
    if fields:
        assert sorted({e["field"] for e in body["errors"]}) == sorted(fields)
    # The request id is random hex: a hidden value of four digits can turn up in it by chance.
    shown = response.text.replace(str(body.get("request_id", "")), "")
    for value in hides:
        assert value not in shown
    return body


async def audit_rows(owner: asyncpg.Connection, prefix: str = "") -> list[asyncpg.Record]:
    """The audit events whose action starts with `prefix`, oldest first."""
    return list(
        await owner.fetch(
            "SELECT action, outcome, outcome_reason, scope, actor, entity_type, entity_id,"
            " detail::text AS detail FROM audit_events WHERE action LIKE $1 ORDER BY seq",
            prefix + "%",
        )
    )


async def everything_stored(owner: asyncpg.Connection) -> str:
    """Every row the account feature and the audit log hold, as text, for leak checks."""
    parts = []
    for table in ("audit_events", "rate_limits", "revocations", "auth0_log_ids"):
        rows = await owner.fetch(f"SELECT t::text AS row FROM {table} t")
        parts += [r["row"] for r in rows]
    return "\n".join(parts)


def served_by_worker(directory: Path, method: str, route: str, status: int) -> dict[str, float]:
    """Each worker's count of `method route` answered `status`, from its counter file alone
    (the file is named after the worker's pid)."""
    labels = tuple(sorted({"method": method, "route": route, "status": str(status)}.items()))
    counts = {}
    for file in directory.glob("counter_*.db"):
        alone = directory.parent / f"alone-{file.stem}"
        alone.mkdir(exist_ok=True)
        shutil.copy(file, alone / file.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        text = generate_latest(registry).decode()
        shutil.rmtree(alone)
        found = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (sample.name, tuple(sorted(sample.labels.items()))) == (
                    "http_requests_total",
                    labels,
                ):
                    found = sample.value
        counts[file.stem.removeprefix("counter_")] = found
    return counts
