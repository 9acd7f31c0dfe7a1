"""Settings: required values, validation, and secrets that never print."""

from __future__ import annotations

import pytest

from app.core.settings import ConfigError, load_settings

VALID = {
    "database_url": "postgresql://app@db.internal:5432/bff",
    "auth0_domain": "tenant.eu.auth0.com",
    "auth0_audience": "https://api.example.com",
    "auth0_client_id": "cid",
    "auth0_client_secret": "super-secret-value",
    "_env_file": None,
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABASE_URL",
        "AUTH0_DOMAIN",
        "AUTH0_AUDIENCE",
        "AUTH0_CLIENT_ID",
        "AUTH0_CLIENT_SECRET",
        "AUTH0_BASE_URL",
        "MIGRATIONS_DATABASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_valid_settings_derive_issuer_and_tenant_url() -> None:
    settings = load_settings(**VALID)
    assert settings.auth0.issuer == "https://tenant.eu.auth0.com/"
    assert settings.auth0.tenant_url == "https://tenant.eu.auth0.com"
    assert settings.auth0.jwks_url == "https://tenant.eu.auth0.com/.well-known/jwks.json"
    assert settings.database.owner_url == VALID["database_url"]


def test_base_url_redirects_requests_but_not_the_issuer() -> None:
    settings = load_settings(**VALID, auth0_base_url="http://127.0.0.1:9999/")
    assert settings.auth0.tenant_url == "http://127.0.0.1:9999"
    assert settings.auth0.issuer == "https://tenant.eu.auth0.com/"


@pytest.mark.parametrize(
    "missing",
    ["database_url", "auth0_domain", "auth0_audience", "auth0_client_id", "auth0_client_secret"],
)
def test_missing_required_setting_is_one_line_naming_it(missing: str) -> None:
    values = {k: v for k, v in VALID.items() if k != missing}
    with pytest.raises(ConfigError) as caught:
        load_settings(**values)
    message = str(caught.value)
    assert "\n" not in message
    assert f"missing required setting(s): {missing.upper()}" in message


def test_settings_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/d")
    monkeypatch.setenv("AUTH0_DOMAIN", "env-tenant.auth0.com")
    monkeypatch.setenv("AUTH0_AUDIENCE", "aud")
    monkeypatch.setenv("AUTH0_CLIENT_ID", "id")
    monkeypatch.setenv("AUTH0_CLIENT_SECRET", "s")
    monkeypatch.setenv("AUTH0_ALGORITHMS", "RS256, ES256")
    settings = load_settings(_env_file=None)
    assert settings.auth0.domain == "env-tenant.auth0.com"
    assert settings.auth0.algorithms == ["RS256", "ES256"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("database_url", "mysql://u@h/d", "DATABASE_URL must be a postgresql:// URL"),
        ("database_url", "postgresql://u@h", "DATABASE_URL must name a database"),
        ("database_url", "postgresql://u@h1:5432,h2:x/d", "DATABASE_URL names a host with a bad"),
        ("database_url", "postgresql://u@h1:5432,h2:70000/d", "DATABASE_URL names a host with"),
        (
            "database_url",
            "postgresql://u@h1,h2/d?target_session_attrs=writable",
            "DATABASE_URL: target_session_attrs must be one of",
        ),
        ("shutdown_drain_seconds", "-1", "SHUTDOWN_DRAIN_SECONDS"),
        ("db_connect_retry_seconds", "-1", "DB_CONNECT_RETRY_SECONDS"),
        ("auth0_domain", "https://tenant.auth0.com/", "AUTH0_DOMAIN is a host name"),
        ("auth0_base_url", "ftp://x", "AUTH0_BASE_URL must be an http(s) URL"),
        ("auth0_algorithms", "HS256", "AUTH0_ALGORITHMS may list only"),
        ("auth0_algorithms", "none", "AUTH0_ALGORITHMS may list only"),
        ("auth0_algorithms", "PS256", "AUTH0_ALGORITHMS may list only"),
        ("token_leeway_seconds", "-1", "TOKEN_LEEWAY_SECONDS"),
    ],
)
def test_invalid_setting_is_named(field: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{**VALID, field: value})
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_url_naming_a_primary_and_its_standbys_is_accepted() -> None:
    url = "postgresql://u:pw@db-a:5432,db-b:5433,[::1]/d?target_session_attrs=read-write"
    settings = load_settings(**{**VALID, "database_url": url, "shutdown_drain_seconds": "5"})
    assert settings.database.url == url
    assert settings.server.shutdown_drain_seconds == 5.0
    # The defaults keep what a single copy did: no drain, no waiting for a database.
    defaults = load_settings(**VALID)
    assert defaults.server.shutdown_drain_seconds == 0
    assert defaults.database.connect_retry_seconds == 0


def test_secrets_never_print() -> None:
    settings = load_settings(**VALID, auth0_log_stream_token="hook-secret")
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert "super-secret-value" not in text
        assert "hook-secret" not in text


def test_derived_keys_are_stable_and_purpose_bound() -> None:
    a = load_settings(**VALID)
    b = load_settings(**VALID)
    assert a.derived_key("cursor") == b.derived_key("cursor")
    assert a.derived_key("cursor") != a.derived_key("email-hash")
    other = load_settings(**{**VALID, "auth0_client_secret": "different"})
    assert other.derived_key("cursor") != a.derived_key("cursor")


def test_env_example_documents_every_setting_with_a_comment() -> None:
    from pathlib import Path

    from app.core.settings import Settings

    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    lines = text.splitlines()
    names = {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}
    assert set(Settings.env_names()) <= names
    for index, line in enumerate(lines):
        if line and not line.startswith("#"):
            # A comment directly above, or above the group of settings it belongs to.
            above = lines[index - 1]
            assert above.startswith("#") or "=" in above, f"{line.split('=')[0]}: no comment"
