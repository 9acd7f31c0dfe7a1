"""The console's pages over HTTP: the cookie signs in (a redirect to the sign-in without
one), a page needs its permission (a 403 page, recorded as a denial), the audit log's filters
and keyset pages, an event with its place in the chain, a patient's access report and its
downloads, each view recorded as an `audit.read` naming the patient."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from app.console.edge import CONSOLE_CSP
from app.session.cookies import SESSION_COOKIE
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.session.support import cleared, login, with_cookie

PATIENT = {"given_name": "Ada", "family_name": "Lovelace", "birth_date": "1990-12-10"}


def page_headers(cookie: str) -> dict[str, str]:
    """A browser's GET of a page: the cookie, no X-CSRF."""
    return with_cookie(cookie, csrf=False)


async def _patient(app: httpx.AsyncClient, cookie: str) -> str:
    created = await app.post("/api/patients", json=PATIENT, headers=with_cookie(cookie))
    assert created.status_code == 201, created.text
    patient_id: str = created.json()["id"]
    read = await app.get(f"/api/patients/{patient_id}", headers=with_cookie(cookie))
    assert read.status_code == 200
    return patient_id


async def _reads(owner: asyncpg.Connection, view: str) -> list[asyncpg.Record]:
    return list(
        await owner.fetch(
            "SELECT actor, patient_id, detail FROM audit_events"
            " WHERE action = 'audit.read' AND detail->>'view' = $1 ORDER BY seq",
            view,
        )
    )


async def test_without_a_session_a_page_redirects_to_the_sign_in(app: httpx.AsyncClient) -> None:
    response = await app.get("/console/audit?actor=x")
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/auth/login"
    assert parse_qs(location.query)["return_to"] == ["/console/audit?actor=x"]


async def test_a_cookie_naming_no_session_redirects_and_clears_it(app: httpx.AsyncClient) -> None:
    response = await app.get("/console/", headers=page_headers("not-a-session"))
    assert response.status_code == 303
    assert response.headers["location"].startswith("/auth/login?")
    assert cleared(response, SESSION_COOKIE)


async def test_the_home_page_is_served_with_the_console_csp(app: httpx.AsyncClient) -> None:
    cookie = await login(app, "alice")
    response = await app.get("/console/", headers=page_headers(cookie))
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == CONSOLE_CSP
    assert "script-src 'self'" in CONSOLE_CSP and "unsafe-inline" not in CONSOLE_CSP
    assert response.headers["cache-control"] == "no-store"
    assert 'href="/console/audit"' in response.text
    assert "<script>" not in response.text  # scripts come from files only
    script = await app.get("/console/static/console.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]


async def test_a_clinician_gets_a_403_page_and_the_denial_is_recorded(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "clinician")
    patient_id = await _patient(app, cookie)
    for path in (
        "/console/audit",
        f"/console/patients/{patient_id}/access",
        f"/console/patients/{patient_id}/access.csv",
        "/console/audit/events/1",
    ):
        response = await app.get(path, headers=page_headers(cookie))
        assert response.status_code == 403, path
        assert response.headers["content-type"].startswith("text/html")
        assert 'id="forbidden"' in response.text and "read:audit_events" in response.text
        assert "patient." not in response.text  # no event of the log on it
    denied = await owner.fetch(
        "SELECT entity_id FROM audit_events WHERE action = 'access.denied' ORDER BY seq"
    )
    assert [r["entity_id"] for r in denied] == [
        "/console/audit",
        "/console/patients/{patient_id:uuid}/access",
        "/console/patients/{patient_id:uuid}/access.csv",
        "/console/audit/events/{seq:int}",
    ]
    assert await _reads(owner, "console.log") == []
    home = await app.get("/console/", headers=page_headers(cookie))
    assert home.status_code == 200 and 'href="/console/audit"' not in home.text


async def test_the_log_filters_to_one_patient_and_records_the_view(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    patient_id = await _patient(app, cookie)
    other = await _patient(app, cookie)
    response = await app.get(
        "/console/audit", params={"patient": patient_id}, headers=page_headers(cookie)
    )
    assert response.status_code == 200, response.text
    assert f"/console/patients/{patient_id}/access" in response.text
    assert other not in response.text
    assert "patient.read" in response.text and "patient.created" in response.text
    assert "Lovelace" not in response.text  # events hold no patient values
    (read,) = await _reads(owner, "console.log")
    assert read["actor"] == "auth0|alice" and str(read["patient_id"]) == patient_id


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"patient": "not-a-uuid"}, "patient"),
        ({"outcome": "maybe"}, "outcome"),
        ({"action": "DROP TABLE"}, "action"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00", "until": "2026-03-01T00:00"}, "until"),
        ({"since": "2026-01-02T00:00", "until": "2026-01-01T00:00"}, "until"),
        ({"actor": "a\u0000b"}, "actor"),
        ({"page": "2"}, "page"),
        ({"cursor": "forged"}, "cursor"),
    ],
)
async def test_a_bad_filter_is_a_400_page_naming_the_field_and_nothing_is_read(
    app: httpx.AsyncClient, owner: asyncpg.Connection, params: dict[str, str], field: str
) -> None:
    cookie = await login(app, "alice")
    response = await app.get("/console/audit", params=params, headers=page_headers(cookie))
    assert response.status_code == 400
    assert f'id="e-{field}"' in response.text
    assert "<tbody>\n  \n  </tbody>" in response.text  # no event shown
    assert await _reads(owner, "console.log") == []


async def test_pages_of_the_log_follow_the_keyset_and_a_cursor_is_bound_to_its_filters(
    app: httpx.AsyncClient,
) -> None:
    cookie = await login(app, "alice")
    for _ in range(26):  # 26 creates and 26 reads: 52 events, more than a page of 50
        await _patient(app, cookie)
    first = await app.get(
        "/console/audit", params={"action": "patient.*"}, headers=page_headers(cookie)
    )
    assert first.status_code == 200
    assert first.text.count('aria-label="Event ') == 50
    next_url = (
        first.text.split('id="next" rel="next" href="')[1].split('"')[0].replace("&amp;", "&")
    )
    second = await app.get(next_url, headers=page_headers(cookie))
    assert second.status_code == 200
    assert second.text.count('aria-label="Event ') == 2
    assert 'id="next"' not in second.text
    cursor = parse_qs(urlsplit(next_url).query)["cursor"][0]
    moved = await app.get(
        "/console/audit",
        params={"action": "patient.read", "cursor": cursor},
        headers=page_headers(cookie),
    )
    assert moved.status_code == 400 and 'id="e-cursor"' in moved.text


async def test_an_event_shows_its_request_id_hash_and_place_in_the_chain(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    patient_id = await _patient(app, cookie)
    row = await owner.fetchrow(
        "SELECT seq, request_id, hash FROM audit_events WHERE action = 'patient.read'"
    )
    response = await app.get(f"/console/audit/events/{row['seq']}", headers=page_headers(cookie))
    assert response.status_code == 200
    assert row["request_id"] in response.text
    assert bytes(row["hash"]).hex() in response.text
    assert "link intact" in " ".join(response.text.split())
    (read,) = await _reads(owner, "console.event")
    assert str(read["patient_id"]) == patient_id
    missing = await app.get("/console/audit/events/999999", headers=page_headers(cookie))
    assert missing.status_code == 404


async def test_another_scopes_event_is_not_shown(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    bob = await login(app, "bob")
    await _patient(app, bob)
    seq = await owner.fetchval("SELECT seq FROM audit_events WHERE action = 'patient.read'")
    alice = await login(app, "alice")
    response = await app.get(f"/console/audit/events/{seq}", headers=page_headers(alice))
    assert response.status_code == 404
    assert "patient.read" not in response.text


async def test_the_access_report_groups_by_day_and_its_csv_matches_the_api_export(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    patient_id = await _patient(app, cookie)
    report = await app.get(f"/console/patients/{patient_id}/access", headers=page_headers(cookie))
    assert report.status_code == 200
    today = datetime.now(UTC).date().isoformat()
    assert f'<h2 id="d-{today}">{today}</h2>' in report.text
    assert "through read" in report.text and "patient.created" in report.text
    downloaded = await app.get(
        f"/console/patients/{patient_id}/access.csv", headers=page_headers(cookie)
    )
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"].startswith("text/csv")
    now = datetime.now(UTC)
    exported = await app.get(
        "/api/audit-events/export",
        params={
            "format": "csv",
            "patient_id": patient_id,
            "since": (now - timedelta(hours=1)).isoformat(),
            "until": (now + timedelta(minutes=1)).isoformat(),
        },
        headers=with_cookie(cookie),
    )
    assert exported.status_code == 200
    ours = list(csv.reader(io.StringIO(downloaded.text)))
    theirs = list(csv.reader(io.StringIO(exported.text)))
    # Header, create, read, the report's view and the download's own (recorded before its
    # first byte); the API's export came later and lists its own record too.
    assert len(ours) == 1 + 4 and ours == theirs[: len(ours)]
    assert [row[5] for row in theirs[len(ours) :]] == ["audit.exported"]
    views = [
        r["detail"]
        for r in await owner.fetch(
            "SELECT detail->>'view' AS detail FROM audit_events WHERE action = 'audit.read'"
            " AND patient_id = $1 ORDER BY seq",
            uuid.UUID(patient_id),
        )
    ]
    assert views == ["console.access_report", "console.access_report.csv"]


async def test_the_access_report_names_the_months_archived_out_of_the_log(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    patient_id = await _patient(app, cookie)
    url = f"/console/patients/{patient_id}/access"
    before = await app.get(url, headers=page_headers(cookie))
    assert before.status_code == 200
    assert 'id="archived"' not in before.text
    for month in ("2025-01", "2025-02"):  # as `python -m app audit archive` records them
        await owner.execute(
            "INSERT INTO audit_archived_months (month, events, sha256, dropped) "
            "VALUES ($1, 10, $2, true)",
            month,
            "0" * 64,
        )
    report = await app.get(url, headers=page_headers(cookie))
    assert report.status_code == 200
    assert "events recorded in 2025-01, 2025-02, months archived out of the log" in report.text
    assert f"access-report --patient {patient_id}" in report.text
    assert "patient.created" in report.text  # the live events are still listed


async def test_the_fhir_download_is_a_bundle_of_the_patients_audit_events(
    app: httpx.AsyncClient,
) -> None:
    cookie = await login(app, "alice")
    patient_id = await _patient(app, cookie)
    response = await app.get(
        f"/console/patients/{patient_id}/access.fhir.json", headers=page_headers(cookie)
    )
    assert response.status_code == 200
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    resources = [entry["resource"] for entry in bundle["entry"]]
    assert {r["resourceType"] for r in resources} == {"AuditEvent"}
    codes = [r["subtype"][1]["code"] for r in resources]
    assert codes == ["patient.created", "patient.read", "audit.read"]  # the last: this download
    for resource in resources:
        assert {"what": {"reference": f"Patient/{patient_id}"}}.items() <= resource["entity"][
            0
        ].items()


async def test_a_cross_site_fetch_with_the_cookie_is_refused(app: httpx.AsyncClient) -> None:
    cookie = await login(app, "alice")
    headers = page_headers(cookie) | {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}
    response = await app.get("/console/audit", headers=headers)
    assert response.status_code == 403
    navigate = page_headers(cookie) | {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert (await app.get("/console/", headers=navigate)).status_code == 200


async def test_without_cookie_mode_there_is_no_console(database: ProvisionedDatabase) -> None:
    async with running_app(make_settings(database)) as http:
        for path in ("/console/", "/console/audit", "/console/static/console.js"):
            assert (await http.get(path)).status_code == 404, path


async def test_recorded_text_is_escaped_on_the_page(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    agent = '<script>alert("x")</script>'
    created = await app.post(
        "/api/patients", json=PATIENT, headers=with_cookie(cookie, **{"User-Agent": agent})
    )
    assert created.status_code == 201
    seq = await owner.fetchval("SELECT seq FROM audit_events WHERE action = 'patient.created'")
    response = await app.get(f"/console/audit/events/{seq}", headers=page_headers(cookie))
    assert response.status_code == 200
    assert agent not in response.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in response.text
