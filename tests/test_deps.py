"""The dependency audit (scripts/audit-deps) and the one finding it accepts.

The audit is run end to end against a local stand-in for PyPI's JSON API, so its verdicts
and exit codes are what CI would see; the accepted ecdsa finding is backed by a check that
verifying tokens never loads ecdsa.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", ROOT / "scripts" / "audit_deps.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit_deps"] = module
    spec.loader.exec_module(module)
    return module


audit_deps = _load_audit()


def _vuln(vid: str, *aliases: str, fixed: tuple[str, ...] = (), withdrawn: str | None = None):
    return {"id": vid, "aliases": list(aliases), "fixed_in": list(fixed), "withdrawn": withdrawn}


PROJECTS: dict[str, dict[str, Any]] = {
    "clean": {"info": {"version": "2.0"}, "vulnerabilities": []},
    "holey": {
        "info": {"version": "1.4"},
        "vulnerabilities": [_vuln("GHSA-aaaa", "CVE-2099-1", fixed=("1.5",))],
    },
    "retracted": {
        "info": {"version": "3.1"},
        "vulnerabilities": [_vuln("PYSEC-1", withdrawn="2026-01-01T00:00:00Z")],
    },
    "accepted-pkg": {
        "info": {"version": "0.9"},
        "vulnerabilities": [_vuln("PYSEC-7", "CVE-2099-7"), _vuln("GHSA-bbbb", "CVE-2099-7")],
    },
}


@pytest.fixture(scope="module")
def pypi() -> Iterator[str]:
    """A stand-in for PyPI's project JSON endpoint; unknown projects get 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            project = PROJECTS.get(parts[-2]) if len(parts) >= 2 and parts[-1] == "json" else None
            body = json.dumps(project).encode() if project else b"{}"
            self.send_response(200 if project else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pypi"
    server.shutdown()


EXCEPTIONS = audit_deps.Exceptions.parse(
    "# comment\nCVE-2099-7 signing only, never imported\nold-pkg==1.0 held back by a dev tool\n"
)


def test_latest_releases_without_advisories_pass(pypi: str) -> None:
    report = audit_deps.audit([("clean", "2.0"), ("retracted", "3.1")], EXCEPTIONS, pypi)
    assert not report.failed
    assert report.vulnerable == [] and report.unaudited == []


def test_a_known_vulnerability_in_the_installed_release_fails(pypi: str) -> None:
    report = audit_deps.audit([("clean", "2.0"), ("Holey", "1.4")], EXCEPTIONS, pypi)
    assert report.failed
    assert report.vulnerable == ["Holey==1.4: GHSA-aaaa / CVE-2099-1 (fixed in: 1.5)"]


def test_an_accepted_id_matches_every_advisory_that_aliases_it(pypi: str) -> None:
    report = audit_deps.audit([("accepted_pkg", "0.9")], EXCEPTIONS, pypi)
    assert not report.failed
    assert len(report.accepted) == 2
    assert report.used_exceptions == {"CVE-2099-7"}


def test_an_older_release_is_unaudited_unless_excepted(pypi: str) -> None:
    report = audit_deps.audit([("clean", "1.9")], EXCEPTIONS, pypi)
    assert report.failed
    assert report.unaudited == [
        "clean==1.9: not the latest release (2.0), so PyPI's data does not cover it"
    ]
    excepted = audit_deps.Exceptions.parse("clean==1.9 pinned by a dev tool\n")
    assert not audit_deps.audit([("clean", "1.9")], excepted, pypi).failed


def test_no_answer_is_a_failure_not_a_pass(pypi: str) -> None:
    report = audit_deps.audit([("unknown-project", "1.0")], EXCEPTIONS, pypi)
    assert report.failed
    assert report.unaudited[0].startswith("unknown-project==1.0: no vulnerability data (HTTPError")
    closed = audit_deps.audit([("clean", "2.0")], EXCEPTIONS, "http://127.0.0.1:9/pypi")
    assert closed.failed and "URLError" in closed.unaudited[0]


def test_an_exception_without_a_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="line 2: an exception needs a reason"):
        audit_deps.Exceptions.parse("# ok\nCVE-2099-9\n")


def test_the_command_exits_1_and_names_the_finding(pypi: str, tmp_path: Path) -> None:
    """The CLI over a real environment: a fake `python` whose pip freeze lists the pins."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nprintf 'clean==2.0\\nholey==1.4\\n-e git+x#egg=y\\n'\n")
    fake.chmod(0o755)
    script = str(ROOT / "scripts" / "audit_deps.py")
    env = {"PATH": "/usr/bin:/bin", "PYPI_JSON_URL": pypi}
    run = subprocess.run(
        [sys.executable, script, str(fake)], capture_output=True, text=True, env=env, check=False
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "VULNERABLE  holey==1.4: GHSA-aaaa / CVE-2099-1 (fixed in: 1.5)" in run.stdout
    assert "2 distributions, 2 audited, 1 vulnerable, 0 unaudited" in run.stdout


def test_the_projects_exceptions_file_parses_and_gives_reasons() -> None:
    parsed = audit_deps.Exceptions.parse(audit_deps.EXCEPTIONS.read_text())
    assert "CVE-2024-23342" in parsed.vulnerabilities
    assert all(reason for reason in [*parsed.vulnerabilities.values(), *parsed.releases.values()])


def test_verifying_tokens_never_loads_ecdsa() -> None:
    """Backs the accepted ecdsa finding: RS256 and ES256 verification use cryptography."""
    program = textwrap.dedent(
        """
        import asyncio, importlib, pkgutil, sys, time
        import httpx
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from jose import jwk, jwt
        import app
        for module in pkgutil.walk_packages(app.__path__, "app."):
            importlib.import_module(module.name)
        from devkit.keys import TokenMinter
        from app.core.settings import Settings
        from app.auth.tokens import TokenVerifier

        minter = TokenMinter(domain="t.example.com", audience="https://api")
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()
        ec_jwk = {**jwk.construct(pem, "ES256").public_key().to_dict(), "kid": "ec-1"}
        keys = {"keys": [*minter.jwks()["keys"], ec_jwk]}
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json=keys))
        settings = Settings(
            database_url="postgresql://x@127.0.0.1/db", auth0_domain="t.example.com",
            auth0_audience="https://api", auth0_client_id="cid", auth0_client_secret="s",
            auth0_base_url="http://tenant.test", auth0_algorithms=["RS256", "ES256"],
            app_secret_key="k" * 32, _env_file=None)

        async def main():
            async with httpx.AsyncClient(transport=transport) as http:
                verifier = TokenVerifier(settings, http)
                rs = minter.mint(sub="auth0|rs")
                es = jwt.encode(minter.claims(sub="auth0|es"), pem, "ES256",
                                headers={"kid": "ec-1"})
                print((await verifier.verify_access_token(rs)).sub)
                print((await verifier.verify_access_token(es)).sub)

        asyncio.run(main())
        print(sorted(m for m in sys.modules if m.split(".")[0] in {"ecdsa", "rsa"}))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:3] == ["auth0|rs", "auth0|es", "[]"]
