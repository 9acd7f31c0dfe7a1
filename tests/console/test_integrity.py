"""The console's integrity page (the chain verified over a window, the latest signed digests,
the offline steps and their NDJSON export) and its activity charts (SVG drawn on the server,
the numbers in tables), each recorded as the API's reads are."""

from __future__ import annotations

import re

import asyncpg
import httpx
import orjson
import pytest

from app.console import charts
from devkit.db import ProvisionedDatabase
from tests.audit.tamper import issue
from tests.console.test_pages import _patient, page_headers
from tests.session.support import login, with_cookie


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


async def test_an_intact_chain_is_reported_with_its_count_and_the_check_is_recorded(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    await _patient(app, cookie)
    count = await owner.fetchval(
        "SELECT count(*) FROM audit_events WHERE scope = 'user:auth0|alice'"
    )
    response = await app.get("/console/integrity", headers=page_headers(cookie))
    assert response.status_code == 200
    assert f"Intact: {count} events, seq 1 to {count}" in _text(response.text)
    assert "No digest has been signed yet" in response.text
    assert 'href="/.well-known/audit-keys"' in response.text
    recorded = await owner.fetchrow(
        "SELECT detail FROM audit_events WHERE action = 'audit.verified' AND actor = 'auth0|alice'"
    )
    detail = orjson.loads(recorded["detail"])
    assert detail["view"] == "console.integrity" and detail["status"] == "intact"


async def test_a_rewritten_event_shows_as_broken(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    await _patient(app, cookie)
    seq = await owner.fetchval("SELECT seq FROM audit_events WHERE action = 'patient.read'")
    await owner.execute("SET session_replication_role = replica")  # user triggers off
    try:
        await owner.execute("UPDATE audit_events SET outcome = 'denied' WHERE seq = $1", seq)
    finally:
        await owner.execute("SET session_replication_role = origin")
    response = await app.get("/console/integrity", headers=page_headers(cookie))
    assert response.status_code == 200
    assert f"Broken at seq {seq}" in _text(response.text)


async def test_the_latest_digests_show_with_their_key_ids(
    app: httpx.AsyncClient, database: ProvisionedDatabase
) -> None:
    cookie = await login(app, "alice")
    await _patient(app, cookie)
    issued = await issue(database)
    response = await app.get("/console/integrity", headers=page_headers(cookie))
    assert response.status_code == 200
    table = response.text.split('id="digests"')[1].split("</table>")[0]
    assert f"<code>{issued.kid}</code>" in table
    assert f"<td>{issued.number}</td>" in table


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "soon"}, "since"),
        ({"since": "2026-01-01T00:00", "until": "2026-03-01T00:00"}, "until"),
        ({"actor": "auth0|alice"}, "actor"),
    ],
)
async def test_a_bad_window_is_a_400_page_and_nothing_is_verified_or_read(
    app: httpx.AsyncClient, owner: asyncpg.Connection, params: dict[str, str], field: str
) -> None:
    cookie = await login(app, "alice")
    for path in ("/console/integrity", "/console/activity", "/console/integrity/events.ndjson"):
        response = await app.get(path, params=params, headers=page_headers(cookie))
        assert response.status_code == 400, path
        assert f'id="e-{field}"' in response.text
    assert (
        await owner.fetchval(
            "SELECT count(*) FROM audit_events WHERE action IN ('audit.verified', 'audit.read',"
            " 'audit.exported')"
        )
        == 0
    )


async def test_the_offline_export_holds_the_apis_events_and_is_recorded_first(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    await _patient(app, cookie)
    page = await app.get("/console/integrity", headers=page_headers(cookie))
    link = page.text.split('id="export" href="')[1].split('"')[0].replace("&amp;", "&")
    exported = await app.get(link, headers=page_headers(cookie))
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    ours = [orjson.loads(line) for line in exported.text.splitlines()]
    window = dict(pair.split("=") for pair in link.split("?", 1)[1].split("&"))
    api = await app.get(
        "/api/audit-events/export",
        params={"format": "ndjson"} | {k: v + ":00Z" for k, v in window.items()},
        headers=with_cookie(cookie),
    )
    theirs = [orjson.loads(line) for line in api.text.splitlines()]
    assert ours == theirs[: len(ours)] and len(theirs) == len(ours) + 1
    assert ours[-1]["action"] == "audit.exported"  # recorded before its first byte
    assert ours[-1]["detail"]["view"] == "console.export"


async def test_activity_draws_the_hours_and_top_actors_with_their_numbers(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    await _patient(app, cookie)
    await _patient(app, cookie)
    refused = await app.get("/api/admin/users/auth0%7Cbob/roles", headers=with_cookie(cookie))
    assert refused.status_code in (200, 403, 404, 503)
    response = await app.get("/console/activity", headers=page_headers(cookie))
    assert response.status_code == 200
    assert response.text.count('role="img"') == 3
    assert '<title id="c-events-t">Events per hour' in response.text
    hours = response.text.split('id="hours"')[1].split("</table>")[0]
    rows = re.findall(r"<tr><th scope=\"row\">([^<]+)</th>(.*?)</tr>", hours)
    assert len(rows) in (24, 25)  # the last 24 hours, to the next whole minute
    total = sum(int(n) for _, cells in rows for n in re.findall(r"<td>(\d+)</td>", cells)[:-1])
    # Every event of the scope so far, less the activity view's own (recorded after the read).
    stored = await owner.fetchval(
        "SELECT count(*) FROM audit_events WHERE scope = 'user:auth0|alice'"
    )
    assert total == stored - 1
    actors = response.text.split('id="actors"')[1].split("</table>")[0]
    # Two reads of one patient each (the creates are changes, not disclosures).
    assert "<tr><td>auth0|alice</td><td>2</td><td>2</td></tr>" in actors
    read = await owner.fetchrow(
        "SELECT detail->>'view' AS view FROM audit_events WHERE action = 'audit.read'"
    )
    assert read["view"] == "console.activity"


async def test_a_clinician_gets_403_pages_for_integrity_and_activity(
    app: httpx.AsyncClient,
) -> None:
    cookie = await login(app, "clinician")
    for path in ("/console/integrity", "/console/activity", "/console/integrity/events.ndjson"):
        response = await app.get(path, headers=page_headers(cookie))
        assert response.status_code == 403 and 'id="forbidden"' in response.text, path


def test_chart_labels_are_escaped_and_bars_scale_to_a_round_top() -> None:
    drawn = charts.horizontal_bars("x", "Top <actors>", [("<script>alert(1)</script>", 3)])
    assert "<script>" not in drawn and "&lt;script&gt;" in drawn
    assert "Top &lt;actors&gt;" in drawn
    bars = charts.stacked_bars("y", "t", ["a", "b"], {"one": [3, 0], "two": [4, 5]})
    assert ">10</text>" in bars  # the axis top: 7 rounds up to 10
    heights = [float(h) for h in re.findall(r'height="([\d.]+)"', bars)]
    assert heights == pytest.approx([192 * 0.3, 192 * 0.4, 192 * 0.5])
    assert charts._nice_top(0) == 1 and charts._nice_top(11) == 20 and charts._nice_top(50) == 50
