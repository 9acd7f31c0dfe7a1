"""Security hardening: bidirectional text controls refused in names, HSTS on by default
(off in `python -m app dev`), /metrics behind METRICS_TOKEN, and `dev` trusting
X-Forwarded-For from TRUSTED_PROXIES only."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import respx

from devkit.db import ProvisionedDatabase
from tests.fixtures.app import running_app
from tests.fixtures.settings import make_settings
from tests.helpers import assert_problem, bearer

BIDI_CONTROLS = [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]]
ZWJ, ZWNJ = "\u200d", "\u200c"
PATIENT = {"given_name": "Ada", "family_name": "Lovelace", "birth_date": "1990-12-10"}
WRITER = ("create:patients",)
USER_PATH = r"^/api/v2/users/auth0(%7C|\|)user-1$"


def names(control: str) -> str:
    return f"\u0627\u062d\u0645\u062f{control}Ada"  # Arabic then Latin: where controls hide


class TestBidiControlsInPatientNames:
    @pytest.mark.parametrize(
        "control", BIDI_CONTROLS, ids=[f"U+{ord(c):04X}" for c in BIDI_CONTROLS]
    )
    @pytest.mark.parametrize("field", ["given_name", "family_name"])
    async def test_refused_with_422_naming_the_field(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        owner: asyncpg.Connection,
        control: str,
        field: str,
    ) -> None:
        token = mint(permissions=WRITER, email_verified=True)
        body = {**PATIENT, field: names(control)}
        response = await client.post("/api/patients", json=body, headers=bearer(token))
        problem = assert_problem(response, 422, field, hides=[control])
        assert problem["errors"][0]["message"] == "must not contain bidirectional text controls"
        assert await owner.fetchval("SELECT count(*) FROM patients") == 0
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0

    @pytest.mark.parametrize(
        "name", [f"\u0915\u094d{ZWJ}\u0937", f"\u0645\u06cc{ZWNJ}\u062e\u0648"]
    )
    async def test_letters_joined_by_zwj_or_zwnj_are_names(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        owner: asyncpg.Connection,
        name: str,
    ) -> None:
        token = mint(permissions=WRITER, email_verified=True)
        body = {**PATIENT, "given_name": name}
        response = await client.post("/api/patients", json=body, headers=bearer(token))
        assert response.status_code == 201, response.text
        assert await owner.fetchval("SELECT given_name FROM patients") == name


class TestBidiControlsInProfileNames:
    @pytest.mark.parametrize(
        "control", BIDI_CONTROLS, ids=[f"U+{ord(c):04X}" for c in BIDI_CONTROLS]
    )
    @pytest.mark.parametrize("field", ["given_name", "family_name", "name", "nickname"])
    async def test_refused_with_422_naming_the_field(
        self,
        client: httpx.AsyncClient,
        mint: Callable[..., str],
        tenant: respx.MockRouter,
        owner: asyncpg.Connection,
        control: str,
        field: str,
    ) -> None:
        patch = tenant.route(method="PATCH", path__regex=USER_PATH)
        response = await client.patch(
            "/api/profile", json={field: names(control)}, headers=bearer(mint())
        )
        problem = assert_problem(response, 422, field, hides=[control])
        assert problem["errors"][0]["message"] == "must not contain bidirectional text controls"
        assert not patch.called
        assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0

    async def test_letters_joined_by_zwnj_are_a_name(
        self, client: httpx.AsyncClient, mint: Callable[..., str], tenant: respx.MockRouter
    ) -> None:
        nickname = f"\u0645\u06cc{ZWNJ}\u062e\u0648"
        patch = tenant.route(method="PATCH", path__regex=USER_PATH).mock(
            return_value=httpx.Response(200, json={"user_id": "auth0|user-1", "nickname": nickname})
        )
        response = await client.patch(
            "/api/profile", json={"nickname": nickname}, headers=bearer(mint())
        )
        assert response.status_code == 200, response.text
        assert orjson.loads(patch.calls.last.request.content) == {"nickname": nickname}


class TestStrictTransportSecurity:
    async def test_a_year_by_default(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")
        assert response.headers["strict-transport-security"] == (
            "max-age=31536000; includeSubDomains"
        )

    async def test_zero_turns_it_off(
        self, database: ProvisionedDatabase, tenant: respx.MockRouter
    ) -> None:
        async with running_app(make_settings(database, hsts_seconds=0)) as http:
            response = await http.get("/healthz")
        assert "strict-transport-security" not in response.headers


class TestMetricsToken:
    TOKEN = "metrics-scraper-secret"

    @pytest.fixture
    async def http(self, database: ProvisionedDatabase, tenant: respx.MockRouter) -> Any:
        async with running_app(make_settings(database, metrics_token=self.TOKEN)) as http:
            yield http

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
        ],
        ids=["none", "wrong", "longer", "basic", "bare"],
    )
    async def test_refused_without_the_token(
        self, http: httpx.AsyncClient, headers: dict[str, str]
    ) -> None:
        response = await http.get("/metrics", headers=headers)
        assert_problem(response, 401, hides=[self.TOKEN])
        assert response.headers["www-authenticate"].startswith('Bearer realm="metrics"')
        assert "http_requests" not in response.text

    async def test_served_with_the_token(self, http: httpx.AsyncClient) -> None:
        response = await http.get("/metrics", headers={"Authorization": f"Bearer {self.TOKEN}"})
        assert response.status_code == 200
        assert "http_requests" in response.text

    async def test_open_when_unset(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/metrics")).status_code == 200


# --- python -m app dev ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dev_server(database: ProvisionedDatabase, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Starts `python -m app dev` on the test's database; yields (base URL, token)."""
    processes: list[subprocess.Popen[str]] = []

    def start(**env: str) -> tuple[str, str]:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AUTH0_", "DATABASE_URL", "MIGRATIONS_", "TRUSTED_", "HSTS_"))
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "dev", "--port", str(_free_port())],
            cwd=tmp_path,
            env={
                **clean,
                "DATABASE_URL": database.app_url,
                "MIGRATIONS_DATABASE_URL": database.owner_url,
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        processes.append(process)
        assert process.stdout is not None
        for line in process.stdout:
            match = re.fullmatch(
                r'curl -H "Authorization: Bearer ([^"]+)" (\S+)/api/me', line.strip()
            )
            if match:
                return match.group(2), match.group(1)
        raise AssertionError("no curl line printed")

    yield start
    for process in processes:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _get(url: str, token: str, **headers: str) -> tuple[dict[str, str], Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", **headers})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(response.headers), orjson.loads(response.read())


class TestDevServer:
    @pytest.mark.parametrize(
        ("env", "recorded"),
        [({}, "127.0.0.1"), ({"TRUSTED_PROXIES": "127.0.0.1"}, "203.0.113.7")],
        ids=["no trusted proxies", "loopback trusted"],
    )
    def test_trusts_x_forwarded_for_from_trusted_proxies_only(
        self, dev_server: Callable[..., tuple[str, str]], env: dict[str, str], recorded: str
    ) -> None:
        base, token = dev_server(**env)
        headers, _ = _get(f"{base}/api/me", token, **{"X-Forwarded-For": "203.0.113.7"})
        _, logins = _get(f"{base}/api/me/logins", token)
        assert [item["ip"] for item in logins["items"]] == [recorded]
        assert "Strict-Transport-Security" not in headers  # plain HTTP on loopback
