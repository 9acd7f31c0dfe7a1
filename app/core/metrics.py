"""The service's own Prometheus metrics, and how `/metrics` gathers them.

The metrics below live once per process in prometheus-client's default registry, next to
its `process_*` and `python_*` collectors; each app's request metrics live in that app's
own registry (`app.http.middleware.Metrics`), which also shows the default one.

With more than one worker, `python -m app serve` names a fresh directory in
`PROMETHEUS_MULTIPROC_DIR` before the workers start (`prepare_multiprocess`): every value
is then kept in a file there and one scrape adds up every worker (`exposition`).
prometheus-client picks its mode from that variable when it is first imported, so the
variable must be set before a worker imports it; `multiprocess_enabled` asks the library
which mode it is in rather than reading the variable again.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Auth0 (the Management and Authentication APIs): every call, every retry, the breaker.
AUTH0_CALLS = Counter(
    "auth0_calls", "Calls to Auth0 by operation and outcome.", ["operation", "outcome"]
)
AUTH0_RETRIES = Counter("auth0_retries", "Auth0 calls retried, by operation.", ["operation"])
AUTH0_BREAKER_OPEN = Gauge(
    "auth0_breaker_open",
    "1 while the Auth0 circuit breaker is open (any worker's).",
    multiprocess_mode="livemax",
)
# Counted as well as shown: a breaker open for its cool-down (10 s) can close between two
# scrapes, and only the count remembers it.
AUTH0_BREAKER_OPENINGS = Counter(
    "auth0_breaker_openings", "Times the Auth0 circuit breaker opened."
)
AUTH0_BUDGET = Counter(
    "auth0_budget_calls",
    "Management API slots asked of the shared budget, by priority and outcome (spent or refused).",
    ["priority", "outcome"],
)
PROFILE_CACHE = Counter(
    "profile_cache_reads",
    "Profile page reads of the shared profile cache, by result (fresh, stale, miss, unavailable).",
    ["result"],
)
M2M_TOKEN_FETCHES = Counter(
    "m2m_token_fetches", "Management API access tokens fetched, by outcome.", ["outcome"]
)
JWKS_FETCHES = Counter("jwks_fetches", "Signing-key (JWKS) fetches, by outcome.", ["outcome"])
AUDIT_BATCHES = Histogram(
    "audit_batch_size",
    "Requests whose audit records one batch statement committed (count: batches).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
PATIENT_CREATE_BATCHES = Histogram(
    "patient_create_batch_size",
    "Creates (rows with their events) one transaction committed (count: batches).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
DB_POOL_IN_USE = Gauge(
    "db_pool_connections_in_use",
    "Pooled database connections handed out (all workers).",
    multiprocess_mode="livesum",
)
REVOCATIONS_LIVE = Gauge(
    "revocations_live",
    "Token revocations held in memory and not yet expired (every worker holds them all).",
    multiprocess_mode="livemax",
)
SESSION_REFRESHES = Counter(
    "session_refreshes",
    "Cookie-session token refreshes, by outcome: ok, ended (the tenant refused the refresh "
    "token), failed (the tenant unreachable or refusing us).",
    ["outcome"],
)
# The audit digest issuer (docs/audit.md): it stops rather than sign over digests that no
# longer continue the last one it knew. Alert on either.
AUDIT_DIGESTS_STOPPED = Gauge(
    "audit_digests_stopped",
    "1 while a worker's audit digest issuer has stopped (the digests table was rewritten).",
    multiprocess_mode="livemax",
)
AUDIT_DIGEST_REFUSALS = Counter(
    "audit_digest_refusals",
    "Audit digests refused: the table did not continue the last digest the issuer knew.",
)
# Remote APIs (app/remote): every forwarded call by route and the status we answered
# (the upstream's, or 502/504 when it failed us), and the upstream's time to its headers.
REMOTE_CALLS = Counter(
    "remote_calls", "Calls forwarded to remote APIs, by route and status.", ["route", "status"]
)
REMOTE_LATENCY = Histogram(
    "remote_upstream_seconds",
    "Time a remote API took to answer a forwarded call with its headers, by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REMOTE_TOKENS = Counter(
    "remote_token_grants",
    "Tokens the service asked the tenant for to attach to remote calls, by kind and outcome.",
    ["kind", "outcome"],
)


EVENT_LOOP_LAG = Histogram(
    "event_loop_lag_seconds",
    "How late the event loop ran a timer due every 0.1 s: requests wait this long too.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


def multiprocess_enabled() -> bool:
    """Whether prometheus-client keeps values in `PROMETHEUS_MULTIPROC_DIR` files."""
    return values.ValueClass is not values.MutexValue


class _ProcessWide(Collector):
    """Shows the default registry (the metrics above, `process_*`, `python_*`) in an app's
    own registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing to reserve: the names are the default registry's own


def include_process_wide(registry: CollectorRegistry) -> None:
    registry.register(_ProcessWide())


def exposition(app_registry: CollectorRegistry) -> bytes:
    """The text a scrape gets: this app's registry, or, in multiprocess mode, the sum of
    every worker's files (a fresh registry per scrape, as prometheus-client advises)."""
    from prometheus_client import generate_latest

    if multiprocess_enabled():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(app_registry)


def prepare_multiprocess(workers: int) -> Path | None:
    """Before `workers` (>1) processes start: name a fresh, empty directory for their
    metric files in the environment they inherit. A directory the operator set is emptied
    of old files; one made here is removed when this process exits."""
    given = os.environ.get(MULTIPROC_ENV)
    if workers <= 1 and not given:
        return None
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return directory
    directory = Path(tempfile.mkdtemp(prefix="auth0-bff-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    atexit.register(shutil.rmtree, directory, True)
    return directory


def worker_exited(pid: int) -> None:
    """Drop a finished worker's `live*` gauge values (its counters still count)."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]
