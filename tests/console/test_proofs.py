"""The event page's proof check over HTTP (app/console/endpoints/proofs.py): the latest
checkpoint and an event's inclusion proof, read with the cookie alone, only of the caller's
scope, each recorded as an `audit.read`; what the page's script verifies (tests/console/
test_browser.py runs it in Chromium) holds here against the audit part's own checks; and the
integrity page's checkpoints with their witnesses."""

from __future__ import annotations

import base64
import time
import uuid

import asyncpg
import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.audit.checkpoints import cosign, verify_checkpoint
from app.audit.merkle import leaf_hash, verify_inclusion
from app.audit.signing import load_public_keys
from devkit.db import ProvisionedDatabase
from tests.audit.tamper import RING, issue
from tests.console.test_pages import _patient, page_headers
from tests.helpers import assert_problem
from tests.session.support import login

CHECKPOINT = "/console/audit/checkpoint"
KEYS = load_public_keys({"keys": list(RING.public)})


def _inclusion(event_id: object) -> str:
    return f"/console/audit/events/{event_id}/inclusion"


async def _reads(owner: asyncpg.Connection, view: str) -> list[dict[str, object]]:
    rows = await owner.fetch(
        "SELECT actor, detail FROM audit_events"
        " WHERE action = 'audit.read' AND detail->>'view' = $1 ORDER BY seq",
        view,
    )
    return [{"actor": r["actor"], **orjson.loads(r["detail"])} for r in rows]


async def _event(owner: asyncpg.Connection, user: str, action: str) -> asyncpg.Record:
    row: asyncpg.Record = await owner.fetchrow(
        "SELECT id, seq, hash FROM audit_events WHERE actor = $1 AND action = $2 ORDER BY seq",
        user,
        action,
    )
    return row


async def test_the_auditor_gets_the_checkpoint_and_a_proof_that_verifies(
    app: httpx.AsyncClient, owner: asyncpg.Connection, database: ProvisionedDatabase
) -> None:
    cookie = await login(app, "alice")
    await _patient(app, cookie)
    issued = await issue(database)
    event = await _event(owner, "auth0|alice", "patient.read")

    got = await app.get(CHECKPOINT, headers=page_headers(cookie))
    assert got.status_code == 200, got.text
    assert got.headers["cache-control"] == "no-store"
    body = got.json()
    checkpoint = verify_checkpoint(body["note"], KEYS)
    assert body["size"] == checkpoint.size >= 2 and body["digest"] == issued.number

    answer = await app.get(
        _inclusion(event["id"]), params={"size": body["size"]}, headers=page_headers(cookie)
    )
    assert answer.status_code == 200, answer.text
    proof = answer.json()
    assert proof["event_id"] == str(event["id"]) and proof["seq"] == event["seq"]
    assert proof["tree_size"] == checkpoint.size
    leaf = leaf_hash(bytes(event["hash"]))
    assert base64.b64decode(proof["leaf_hash"]) == leaf
    path = [base64.b64decode(h) for h in proof["audit_path"]]
    verify_inclusion(proof["leaf_index"], proof["tree_size"], leaf, path, checkpoint.root)

    assert await _reads(owner, "console.checkpoint") == [
        {"actor": "auth0|alice", "view": "console.checkpoint", "size": checkpoint.size}
    ]
    assert await _reads(owner, "console.inclusion") == [
        {
            "actor": "auth0|alice",
            "view": "console.inclusion",
            "event_id": str(event["id"]),
            "size": checkpoint.size,
        }
    ]


async def test_the_event_page_carries_the_button_and_what_its_script_needs(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    await _patient(app, cookie)
    event = await _event(owner, "auth0|alice", "patient.read")
    page = await app.get(f"/console/audit/events/{event['seq']}", headers=page_headers(cookie))
    assert page.status_code == 200
    assert 'id="check-proof"' in page.text and "Check this event's proof" in page.text
    assert f'data-event="{event["id"]}"' in page.text
    assert f'data-hash="{bytes(event["hash"]).hex()}"' in page.text
    assert "python -m app audit verify-inclusion" in page.text
    assert "<script>" not in page.text  # the check is the static script's


async def test_before_any_checkpoint_both_say_so_and_nothing_is_recorded(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    cookie = await login(app, "alice")
    await _patient(app, cookie)
    event = await _event(owner, "auth0|alice", "patient.read")
    got = await app.get(CHECKPOINT, headers=page_headers(cookie))
    assert_problem(got, 404, detail="no checkpoint covers your scope yet")
    answer = await app.get(_inclusion(event["id"]), headers=page_headers(cookie))
    assert_problem(answer, 404, detail="the event is not covered by a checkpoint yet")
    assert await _reads(owner, "console.checkpoint") == []
    assert await _reads(owner, "console.inclusion") == []


async def test_an_event_after_the_checkpoint_is_not_covered_yet(
    app: httpx.AsyncClient, owner: asyncpg.Connection, database: ProvisionedDatabase
) -> None:
    cookie = await login(app, "alice")
    patient_id = await _patient(app, cookie)
    await issue(database)
    await app.get(f"/api/patients/{patient_id}", headers=page_headers(cookie) | {"X-CSRF": "1"})
    latest = await owner.fetchval(
        "SELECT id FROM audit_events WHERE actor = 'auth0|alice' ORDER BY seq DESC LIMIT 1"
    )
    answer = await app.get(_inclusion(latest), headers=page_headers(cookie))
    assert_problem(answer, 404, detail="the event is not covered by a checkpoint yet")
    assert await _reads(owner, "console.inclusion") == []


async def test_another_scopes_event_is_a_404_and_nothing_is_recorded(
    app: httpx.AsyncClient, owner: asyncpg.Connection, database: ProvisionedDatabase
) -> None:
    bob = await login(app, "bob")
    await _patient(app, bob)
    await issue(database)
    theirs = await _event(owner, "auth0|bob", "patient.read")
    alice = await login(app, "alice")
    for event_id in (theirs["id"], uuid.uuid4()):
        answer = await app.get(_inclusion(event_id), headers=page_headers(alice))
        assert_problem(answer, 404, detail="no such audit event in your scope")
    assert await _reads(owner, "console.inclusion") == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("size=0", "size"),
        ("size=two", "size"),
        ("size=1&size=2", "size"),
        ("size=999", "size"),  # beyond the latest checkpoint
        ("seq=1", "seq"),
    ],
)
async def test_a_bad_size_is_a_400_and_nothing_is_recorded(
    app: httpx.AsyncClient,
    owner: asyncpg.Connection,
    database: ProvisionedDatabase,
    query: str,
    field: str,
) -> None:
    cookie = await login(app, "alice")
    await _patient(app, cookie)
    await issue(database)
    event = await _event(owner, "auth0|alice", "patient.read")
    answer = await app.get(f"{_inclusion(event['id'])}?{query}", headers=page_headers(cookie))
    assert_problem(answer, 400, field)
    got = await app.get(f"{CHECKPOINT}?size=1", headers=page_headers(cookie))
    assert_problem(got, 400, "size")
    assert await _reads(owner, "console.inclusion") == []
    assert await _reads(owner, "console.checkpoint") == []


async def test_a_clinician_gets_403_pages_and_no_proof(
    app: httpx.AsyncClient, owner: asyncpg.Connection, database: ProvisionedDatabase
) -> None:
    cookie = await login(app, "clinician")
    await _patient(app, cookie)
    await issue(database)
    event = await _event(owner, "auth0|clinician", "patient.read")
    for path in (CHECKPOINT, _inclusion(event["id"])):
        response = await app.get(path, headers=page_headers(cookie))
        assert response.status_code == 403, path
        assert 'id="forbidden"' in response.text and "audit_path" not in response.text
    denied = await owner.fetch(
        "SELECT entity_id FROM audit_events WHERE action = 'access.denied' ORDER BY seq"
    )
    assert [r["entity_id"] for r in denied] == [
        "/console/audit/checkpoint",
        "/console/audit/events/{event_id:uuid}/inclusion",
    ]
    assert await _reads(owner, "console.checkpoint") == []


async def test_without_a_session_the_proof_routes_redirect_to_the_sign_in(
    app: httpx.AsyncClient,
) -> None:
    for path in (CHECKPOINT, _inclusion(uuid.uuid4())):
        response = await app.get(path)
        assert response.status_code == 303 and response.headers["location"].startswith(
            "/auth/login?"
        )


async def test_the_integrity_page_lists_the_checkpoints_and_their_witnesses(
    app: httpx.AsyncClient,
    owner: asyncpg.Connection,
    database: ProvisionedDatabase,
) -> None:
    cookie = await login(app, "alice")
    empty = await app.get("/console/integrity", headers=page_headers(cookie))
    assert "No checkpoint yet" in empty.text.split('id="checkpoints"')[1]
    await _patient(app, cookie)
    issued = await issue(database)
    size, note = await owner.fetchrow(
        "SELECT size, note FROM audit_checkpoints WHERE scope = 'user:auth0|alice'"
    )
    text = note.partition("\n\n")[0] + "\n"
    line = cosign(Ed25519PrivateKey.generate(), "witness.example", text, int(time.time()))
    await owner.execute(
        "INSERT INTO audit_checkpoint_cosignatures (scope, size, witness, line)"
        " VALUES ('user:auth0|alice', $1, 'witness.example', $2)",
        size,
        line,
    )
    response = await app.get("/console/integrity", headers=page_headers(cookie))
    assert response.status_code == 200
    table = response.text.split('id="checkpoints"')[1].split("</table>")[0]
    row = f"<tr><td>{size}</td><td>{issued.number}</td>"
    assert row in table and "<code>witness.example</code>" in table
    served = await app.get(CHECKPOINT, headers=page_headers(cookie))
    assert served.json()["note"] == f"{note}{line}\n"  # the cosignature served with it
