"""deploy/alerts.yml reads what the service exports: every metric its expressions name is in
a scrape of /metrics, and the label values they select (routes, statuses, outcomes) are the
ones the service writes. promtool checks and unit-tests the rules themselves (`.ci/run`)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import respx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.tenant import LOG_STREAM_TOKEN

ROOT = Path(__file__).resolve().parents[1]
RULES = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "increase", "by", "without", "or"}
PROMQL_WORDS |= {"and", "unless", "on", "ignoring", "offset"}
# Metrics the rules read that a scrape of one in-process app cannot show.
FROM_ELSEWHERE = {
    "up": "Prometheus' own, one per scrape target",
}


def expressions() -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for group in RULES["groups"] for rule in group["rules"]}


def metric_names(expr: str) -> set[str]:
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # label matchers and ranges
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    return words - PROMQL_WORDS


def selected(expr: str, label: str) -> set[str]:
    """Every value the expression selects `label` equal to."""
    return set(re.findall(rf'\b{label}="([^"]*)"', expr))


def exported(text: str) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """Every sample name of a scrape, with each sample's labels; a counter family counts under
    its `_total` name too, so a family with no sample yet still shows its name."""
    found: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(text):
        found.setdefault(family.name, set())
        if family.type == "counter":
            found.setdefault(f"{family.name}_total", set())
        for sample in family.samples:
            found.setdefault(sample.name, set()).add(tuple(sorted(sample.labels.items())))
    return found


async def test_the_rules_read_metrics_and_labels_the_service_exports(
    client: httpx.AsyncClient, tenant: respx.MockRouter
) -> None:
    refused = await client.post(
        "/hooks/auth0/log-stream", headers={"Authorization": LOG_STREAM_TOKEN + "x"}, json=[]
    )
    assert refused.status_code == 401
    assert (await client.get("/readyz")).status_code == 200
    scrape = exported((await client.get("/metrics")).text)

    rules = expressions()
    assert set(rules) == {
        "Auth0BreakerOpened",
        "Auth0M2MTokenFailing",
        "High503Rate",
        "SessionRefreshFailing",
        "AuditDigestsStopped",
        "LogStreamWebhookRefused",
        "NotReady",
        "ServiceDown",
    }
    for alert, expr in rules.items():
        unknown = metric_names(expr) - set(scrape) - set(FROM_ELSEWHERE)
        assert unknown == set(), f"{alert} reads metrics the service does not export: {unknown}"

    requests = scrape["http_requests_total"]
    routes = {dict(labels)["route"] for labels in requests}
    for alert, expr in rules.items():
        assert selected(expr, "route") <= routes, alert
    webhook = {"method": "POST", "route": "/hooks/auth0/log-stream", "status": "401"}
    assert tuple(sorted(webhook.items())) in requests
    assert selected(rules["LogStreamWebhookRefused"], "status") == {"401"}
    assert selected(rules["NotReady"], "status") == selected(rules["High503Rate"], "status")
    assert selected(rules["High503Rate"], "status") == {"503"}
    # The outcome that moves when a fetch or a refresh fails: tests/auth0/test_sdk.py and
    # tests/session/test_refresh.py watch it move.
    assert selected(rules["Auth0M2MTokenFailing"], "outcome") == {"failed"}
    assert selected(rules["SessionRefreshFailing"], "outcome") == {"failed"}
