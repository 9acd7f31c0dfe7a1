"""Auth0 Log Streams webhook: secret, formats, idempotency, partial batches."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import orjson
import pytest
import respx

from app.account.emails import email_hash
from app.account.logstream import MalformedBatch, classify, parse_batch, validate_records
from app.account.runtime import account_runtime
from app.core.db import asyncpg_dsn
from app.core.settings import Settings
from tests.fixtures.app import account_app
from tests.fixtures.settings import make_settings
from tests.fixtures.tenant import LOG_STREAM_TOKEN
from tests.helpers import assert_problem, everything_stored

HOOK = "/hooks/auth0/log-stream"
# Log dates are accepted up to 90 days old: an hour ago, to the second.
AN_HOUR_AGO = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0)
DATE = AN_HOUR_AGO.strftime("%Y-%m-%dT%H:%M:%S")
SECRET = {"Authorization": LOG_STREAM_TOKEN}


def log(log_id: str, type_: str = "s", **data: Any) -> dict[str, Any]:
    return {
        "log_id": log_id,
        "data": {
            "date": f"{DATE}.000Z",
            "type": type_,
            "user_id": "auth0|ada",
            "ip": "198.51.100.1",
            "user_agent": "Chrome 120.0.0 / Mac OS X 10.15.7",
            "client_id": "spa-client-id",
            "client_name": "Web",
            "description": "free text that may hold ada@example.com",
            "log_id": log_id,
            **data,
        },
    }


def lines(*records: dict[str, Any]) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in records) + b"\n"


async def stored_events(owner: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await owner.fetch(
            "SELECT action, crud, outcome, outcome_reason, scope, actor, client_id,"
            " host(source_ip) AS ip, user_agent, entity_type, entity_id, occurred_at,"
            " detail::text AS detail FROM audit_events ORDER BY entity_id"
        )
    )


# --- Parsing and validation (unit) ------------------------------------------------------


class TestParseBatch:
    def test_array_object_and_lines(self) -> None:
        assert parse_batch(b'[{"a": 1}, {"b": 2}]') == [{"a": 1}, {"b": 2}]
        assert parse_batch(b' {"a": 1} ') == [{"a": 1}]
        assert parse_batch(b'{"a": 1}\n\n{"b": 2}\n') == [{"a": 1}, {"b": 2}]
        assert parse_batch(b"[]") == []

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"", "empty"),
            (b"   \n", "empty"),
            (b"42", "expected"),
            (b'"text"', "expected"),
            (b'{"a": 1}\n{"b": ', "line 2"),
            (b"[{]", "line 1"),
        ],
    )
    def test_malformed(self, body: bytes, message: str) -> None:
        with pytest.raises(MalformedBatch, match=message):
            parse_batch(body)


class TestValidateRecords:
    def test_valid_and_rejected_by_index(self) -> None:
        items: list[Any] = [
            log("L1"),
            "not an object",
            {"log_id": "L3", "data": {"type": "s"}},  # no date
            {"data": {"type": "s", "date": f"{DATE}Z"}},  # no id at all
            log("L5", ip="999.1.1.1"),
            log("L6", date=DATE),  # no time zone
            {**log("L7"), "data": {**log("L7")["data"], "log_id": "other"}},
            {"data": {"type": "s", "date": f"{DATE}Z", "log_id": "L8"}},
        ]
        valid, rejected = validate_records(items)
        assert [r.id for r in valid] == ["L1", "L8"]
        assert [(r.index, r.log_id) for r in rejected] == [
            (1, None),
            (2, "L3"),
            (3, None),
            (4, "L5"),
            (5, "L6"),
            (6, "L7"),
        ]
        assert [e["field"] for e in rejected[1].errors] == ["data.date"]
        assert [e["field"] for e in rejected[3].errors] == ["data.ip"]
        assert rejected[5].errors == [{"field": "data.log_id", "message": "differs from log_id"}]
        assert "999.1.1.1" not in str(rejected)  # errors name fields, never values

    def test_blank_optional_fields_are_absent(self) -> None:
        [record], rejected = validate_records([log("L1", ip="", user_id="")])
        assert not rejected
        assert record.data.ip is None and record.data.user_id is None


class TestClassify:
    @pytest.mark.parametrize(
        ("code", "action", "outcome"),
        [
            ("s", "idp.login.success", "success"),
            ("f", "idp.login.failed", "failed"),
            ("fp", "idp.login.failed", "failed"),
            ("fu", "idp.login.failed", "failed"),
            ("ss", "idp.signup.success", "success"),
            ("slo", "idp.logout.success", "success"),
            ("limit_wc", "idp.login.blocked", "denied"),
            ("fxyz", "idp.log.other", "failed"),
            ("sxyz", "idp.log.other", "success"),
        ],
    )
    def test_codes(self, code: str, action: str, outcome: str) -> None:
        assert classify(code)[:2] == (action, outcome)


# --- POST /hooks/auth0/log-stream ----------------------------------------------------------


class TestLogStreamWebhook:
    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "wrong-secret"},
            {"Authorization": LOG_STREAM_TOKEN + "x"},
            {"Authorization": "Bearer wrong-secret"},
            {"Authorization": LOG_STREAM_TOKEN[:-1]},
        ],
    )
    async def test_missing_or_forged_secret_stores_nothing(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        headers: dict[str, str],
    ) -> None:
        async with account_app(settings) as running:
            response = await running.http.post(HOOK, headers=headers, json=[log("L1")])
        problem = assert_problem(response, 401)
        assert LOG_STREAM_TOKEN not in response.text
        assert problem["detail"] == "the log stream secret is missing or wrong"
        assert await everything_stored(owner) == ""

    async def test_unset_secret_refuses_everything(
        self, database: Any, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        settings = make_settings(database, auth0_log_stream_token=None)
        async with account_app(settings) as running:
            for headers in ({}, {"Authorization": ""}, SECRET):
                response = await running.http.post(HOOK, headers=headers, json=[log("L1")])
                assert_problem(response, 401)
        assert await everything_stored(owner) == ""

    async def test_array_is_stored_as_audit_events(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        batch = [
            log("L1", "s"),
            log("L2", "fp", user_name="Ada@Example.com"),
            log("L3", "fu", user_id=None, user_name="nobody@example.com"),
            log("L4", "slo", organization_id="org_1"),
            log("L5", "gd_auth_succeed"),
        ]
        async with account_app(settings) as running:
            response = await running.http.post(HOOK, headers=SECRET, json=batch)
        assert response.status_code == 200
        assert response.json() == {
            "received": 5,
            "stored": 5,
            "duplicates": 0,
            "rejected": [],
            "more_rejected": 0,
        }
        events = await stored_events(owner)
        assert [(e["entity_id"], e["action"], e["outcome"], e["scope"]) for e in events] == [
            ("L1", "idp.login.success", "success", "user:auth0|ada"),
            ("L2", "idp.login.failed", "failed", "user:auth0|ada"),
            ("L3", "idp.login.failed", "failed", "tenant"),
            ("L4", "idp.logout.success", "success", "org:org_1"),
            ("L5", "idp.mfa.success", "success", "user:auth0|ada"),
        ]
        first = events[0]
        assert (first["actor"], first["client_id"], first["ip"], first["crud"]) == (
            "auth0|ada",
            "spa-client-id",
            "198.51.100.1",
            "E",
        )
        assert first["user_agent"] == "Chrome 120.0.0 / Mac OS X 10.15.7"
        assert first["occurred_at"] == AN_HOUR_AGO
        assert orjson.loads(first["detail"])["type"] == "s"
        assert orjson.loads(events[1]["detail"])["user_name_hash"] == email_hash(
            settings.derived_key("email-hash"), "ada@example.com"
        )
        assert events[1]["outcome_reason"] == "wrong password"
        everything = (await everything_stored(owner)).lower()
        assert "ada@example.com" not in everything and "nobody@" not in everything
        assert "free text" not in everything
        ids = await owner.fetch("SELECT log_id FROM auth0_log_ids ORDER BY log_id")
        assert [r["log_id"] for r in ids] == ["L1", "L2", "L3", "L4", "L5"]

    async def test_replayed_batch_stores_nothing_new(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        batch = [log("L1"), log("L2", "f")]
        snapshot = "SELECT seq, hash FROM audit_events ORDER BY seq"
        async with account_app(settings) as running:
            first = await running.http.post(HOOK, headers=SECRET, json=batch)
            before = await owner.fetch(snapshot)
            replay = await running.http.post(HOOK, headers=SECRET, content=lines(*batch))
            after_replay = await owner.fetch(snapshot)
            overlap = await running.http.post(HOOK, headers=SECRET, json=[log("L2"), log("L3")])
        assert first.json()["stored"] == 2
        assert replay.status_code == 200
        assert replay.json() == {
            "received": 2,
            "stored": 0,
            "duplicates": 2,
            "rejected": [],
            "more_rejected": 0,
        }
        assert after_replay == before  # not one row added or changed
        assert overlap.json() == {
            "received": 2,
            "stored": 1,
            "duplicates": 1,
            "rejected": [],
            "more_rejected": 0,
        }
        assert [r["entity_id"] for r in await stored_events(owner)] == ["L1", "L2", "L3"]

    async def test_duplicates_within_one_batch(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        async with account_app(settings) as running:
            response = await running.http.post(
                HOOK, headers=SECRET, json=[log("L1"), log("L1"), log("L1")]
            )
        assert response.json() == {
            "received": 3,
            "stored": 1,
            "duplicates": 2,
            "rejected": [],
            "more_rejected": 0,
        }
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 1

    async def test_json_lines_and_single_object(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        async with account_app(settings) as running:
            jsonl = await running.http.post(
                HOOK,
                headers={**SECRET, "Content-Type": "application/x-ndjson"},
                content=lines(log("L1"), log("L2", "ss")),
            )
            single = await running.http.post(HOOK, headers=SECRET, json=log("L3", "f"))
            bearer_form = await running.http.post(
                HOOK, headers={"Authorization": f"Bearer {LOG_STREAM_TOKEN}"}, json=log("L4")
            )
        assert jsonl.json()["stored"] == 2
        assert single.json()["stored"] == 1
        assert bearer_form.json()["stored"] == 1
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 4

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"not json at all",
            b"42",
            lines(log("L1")) + b'{"log_id": "L2", "data": {',  # a torn last line
            b'[{"log_id": "L1"',
        ],
    )
    async def test_malformed_batch_is_400_and_stores_nothing(
        self,
        settings: Settings,
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        body: bytes,
    ) -> None:
        async with account_app(settings) as running:
            response = await running.http.post(HOOK, headers=SECRET, content=body)
        problem = assert_problem(response, 400)
        assert problem["errors"][0]["field"] == "body"
        assert await everything_stored(owner) == ""

    async def test_partly_valid_batch_stores_the_valid_records(
        self, settings: Settings, tenant: respx.MockRouter, owner: asyncpg.Connection
    ) -> None:
        batch: list[Any] = [log("L1"), {"log_id": "L2", "data": {"type": "s"}}, 7, log("L4")]
        async with account_app(settings) as running:
            response = await running.http.post(HOOK, headers=SECRET, json=batch)
        assert response.status_code == 207
        report = response.json()
        assert (report["received"], report["stored"], report["duplicates"]) == (4, 2, 0)
        assert [(r["index"], r["log_id"]) for r in report["rejected"]] == [(1, "L2"), (2, None)]
        assert report["rejected"][0]["errors"] == [
            {"field": "data.date", "message": "Field required"}
        ]
        assert [r["entity_id"] for r in await stored_events(owner)] == ["L1", "L4"]
        ids = await owner.fetch("SELECT log_id FROM auth0_log_ids ORDER BY log_id")
        assert [r["log_id"] for r in ids] == ["L1", "L4"]  # L2 can be sent again, fixed

    async def test_openapi_documents_the_webhook(
        self, settings: Settings, tenant: respx.MockRouter
    ) -> None:
        async with account_app(settings) as running:
            spec = (await running.http.get("/openapi.json")).json()
        operation = spec["paths"][HOOK]["post"]
        assert operation["security"] == [{"logStreamToken": []}]
        assert {"200", "207", "400", "401", "413"} <= operation["responses"].keys()


class TestRetention:
    async def test_old_log_ids_are_purged(
        self, settings: Settings, owner: asyncpg.Connection
    ) -> None:
        await owner.execute(
            "INSERT INTO auth0_log_ids (log_id, ingested_at) VALUES"
            " ('old', now() - interval '91 days'), ('recent', now() - interval '1 day')"
        )
        services = account_runtime(settings)
        conn = await asyncpg.connect(asyncpg_dsn(settings.database.url))
        try:
            for purge in services.purges():  # what the housekeeping task runs each minute
                await purge.run(conn)
        finally:
            await conn.close()
        assert [r["log_id"] for r in await owner.fetch("SELECT log_id FROM auth0_log_ids")] == [
            "recent"
        ]
