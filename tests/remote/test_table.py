"""The route table (REMOTE_APIS_FILE): read at start-up, every entry checked, one line
naming the bad one; no file, no /remote route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.core.settings import ConfigError
from app.core.settings.remote import RemoteSettings
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.fixtures.standin import StandIn

GOOD = {"upstream": "https://labs.example.org/v1", "token": "user"}


def table(tmp_path: Path, apis: dict[str, Any], suffix: str = ".json") -> str:
    path = tmp_path / f"apis{suffix}"
    path.write_text(json.dumps({"apis": apis}))
    return str(path)


def test_a_toml_table(tmp_path: Path) -> None:
    path = tmp_path / "apis.toml"
    path.write_text(
        '[apis.labs]\nupstream = "https://labs.example.org/v1/"\ntoken = "client"\n'
        'audience = "https://labs.example.org"\nmethods = ["get", "POST"]\n'
        'scopes = ["read:results"]\nrate_limit = "600/60"\n'
    )
    (route,) = RemoteSettings.load(apis_file=str(path)).routes
    assert route.prefix == "/remote/labs/"
    assert route.upstream == "https://labs.example.org/v1"
    assert route.methods == {"GET", "POST"}
    assert (route.token, route.audience, route.scopes) == (
        "client",
        "https://labs.example.org",
        ("read:results",),
    )
    assert str(route.rate_limit) == "600/60"
    assert (route.timeout_seconds, route.max_request_bytes) == (10.0, 1024 * 1024)


def test_a_loopback_upstream_may_be_plain_http(tmp_path: Path) -> None:
    for host in ("127.0.0.1:8080", "localhost", "[::1]:9000"):
        entry = {"upstream": f"http://{host}/api", "token": "none"}
        assert RemoteSettings.load(apis_file=table(tmp_path, {"dev": entry})).routes


BAD = [
    ("Labs", GOOD, "a name is 1-63 of a-z 0-9 _ -"),
    ("labs", {**GOOD, "upstream": "http://labs.example.org"}, "upstream must be https"),
    ("labs", {**GOOD, "upstream": "https://u:p@labs.example.org"}, "no credentials"),
    ("labs", {**GOOD, "upstream": "https://labs.example.org/?a=1"}, "no credentials, query"),
    ("labs", {**GOOD, "upstream": "https://labs.example.org/a/../b%2f"}, "must be plain"),
    ("labs", {**GOOD, "token": "bearer"}, "token must be one of none, user, client"),
    ("labs", {"upstream": "https://labs.example.org"}, "needs upstream and token"),
    ("labs", {**GOOD, "token": "client"}, "token client needs an audience"),
    ("labs", {**GOOD, "token": "user_or_client"}, "token user_or_client needs an audience"),
    ("labs", {**GOOD, "methods": ["GET", "TRACE"]}, "methods must be some of"),
    ("labs", {**GOOD, "methods": "GET"}, "methods must be a list of strings"),
    ("labs", {**GOOD, "timeout_seconds": 0}, "timeout_seconds must be a number"),
    ("labs", {**GOOD, "max_response_bytes": -1}, "max_response_bytes must be a whole number"),
    ("labs", {**GOOD, "rate_limit": "lots"}, "a rate limit is COUNT/SECONDS"),
    ("labs", {**GOOD, "permission": "two words"}, "permission must be one permission's name"),
    ("labs", {**GOOD, "audiences": "x"}, "unknown key(s) audiences"),
    ("labs", "https://labs.example.org", "must be a table of settings"),
]


@pytest.mark.parametrize(("name", "entry", "message"), BAD, ids=[b[2][:30] for b in BAD])
def test_a_bad_entry_stops_start_up_naming_it(
    tmp_path: Path, name: str, entry: Any, message: str
) -> None:
    path = table(tmp_path, {"fine": {**GOOD}, name: entry})
    with pytest.raises(ConfigError) as raised:
        RemoteSettings.load(apis_file=path)
    line = str(raised.value)
    assert "\n" not in line
    assert f"REMOTE_APIS_FILE: entry '{name}': " in line
    assert message in line


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("[apis.labs", ".toml", "is not valid TOML"),
        ("{", ".json", "is not valid JSON"),
        ("apis: {}", ".yaml", "must be a .toml or .json file"),
        ('{"routes": {}}', ".json", "the file holds one table, apis"),
    ],
)
def test_an_unreadable_file_stops_start_up(
    tmp_path: Path, content: str, suffix: str, message: str
) -> None:
    path = tmp_path / f"apis{suffix}"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        RemoteSettings.load(apis_file=str(path))


def test_a_missing_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        RemoteSettings.load(apis_file=str(tmp_path / "nope.toml"))


async def test_without_a_table_there_is_no_remote_route(
    database: ProvisionedDatabase, standin: StandIn
) -> None:
    async with running_app(make_settings(database)) as http:
        response = await http.get("/remote/labs/x")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
