"""What the upstream answers, passed back as it was: a HEAD or a 204 with no body, and an
answer that is not HTTP at all as a 502 problem, with the connection not used again."""

from __future__ import annotations

from pathlib import Path

from devkit.db import ProvisionedDatabase
from devkit.upstream import Upstream
from tests.fixtures.standin import StandIn
from tests.remote.scripted import scripted_upstream
from tests.remote.support import Running, remote_settings, running, write_table


async def test_head_and_204_answers_have_no_body(app: Running, upstream: Upstream) -> None:
    head = await app.http.head("/remote/echo/x")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) > 0  # the length a GET would have had
    assert head.content == b""
    empty = await app.http.get("/remote/plain/status/204")
    assert (empty.status_code, empty.content) == (204, b"")
    after = await app.http.get("/remote/echo/y")  # the connection went on, in step
    assert after.json()["raw_path"] == "/echo/y"
    assert len(upstream.seen) == 3


async def test_a_malformed_answer_is_a_502_problem(
    database: ProvisionedDatabase, standin: StandIn, tmp_path: Path
) -> None:
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n"]
    async with scripted_upstream(answers) as served:
        settings = remote_settings(database, write_table(tmp_path, served.url))
        async with running(settings, standin) as app:
            for _ in range(2):  # the second on a new connection: the first is not reused
                response = await app.http.get("/remote/plain/x")
                assert response.status_code == 502
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["detail"] == "the remote API plain could not be reached"
        assert served.connections == 2
