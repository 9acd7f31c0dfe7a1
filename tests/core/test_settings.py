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
    "app_secret_key": "app-secret-key-value-0123456789abcdef",
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
        "APP_SECRET_KEY",
        "AUTH0_MANAGEMENT_DOMAIN",
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
    [
        "database_url",
        "auth0_domain",
        "auth0_audience",
        "auth0_client_id",
        "auth0_client_secret",
        "app_secret_key",
    ],
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
    monkeypatch.setenv("APP_SECRET_KEY", "k" * 32)
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
    other = load_settings(**{**VALID, "app_secret_key": "another-app-secret-key-0123456789"})
    assert other.derived_key("cursor") != a.derived_key("cursor")


def test_rotating_the_client_secret_leaves_the_derived_keys_alone() -> None:
    """The audit log's email hashes and every cursor outlive a routine M2M secret rotation."""
    rotated = load_settings(**{**VALID, "auth0_client_secret": "rotated-secret-value"})
    before = load_settings(**VALID)
    for purpose in ("email-hash", "audit-cursor", "patient-cursor"):
        assert rotated.derived_key(purpose) == before.derived_key(purpose)


def test_the_upgrade_note_keeps_the_keys_of_a_deployment_that_never_set_it() -> None:
    """docs/deployment.md: APP_SECRET_KEY set to the client secret's value gives the keys the
    old derivation gave (HMAC-SHA256 of the purpose under that value)."""
    import hashlib
    import hmac

    old_root = "an-auth0-client-secret-of-64-characters-0123456789abcdef01234567"
    upgraded = load_settings(
        **{**VALID, "auth0_client_secret": old_root, "app_secret_key": old_root}
    )
    expected = hmac.new(old_root.encode(), b"email-hash", hashlib.sha256).digest()
    assert upgraded.derived_key("email-hash") == expected


def test_a_custom_domain_keeps_the_management_api_on_the_canonical_domain() -> None:
    settings = load_settings(
        **{**VALID, "auth0_domain": "login.hospital.example"},
        auth0_management_domain="hospital.eu.auth0.com",
    )
    assert settings.auth0.issuer == "https://login.hospital.example/"
    assert settings.auth0.jwks_url == "https://login.hospital.example/.well-known/jwks.json"
    assert settings.auth0.tenant_url == "https://login.hospital.example"
    assert settings.auth0.management_url == "https://hospital.eu.auth0.com"
    assert settings.auth0.management_audience == "https://hospital.eu.auth0.com/api/v2/"


def test_without_a_management_domain_both_are_auth0_domain() -> None:
    settings = load_settings(**VALID)
    assert settings.auth0.management_url == "https://tenant.eu.auth0.com"
    assert settings.auth0.management_audience == "https://tenant.eu.auth0.com/api/v2/"


def test_base_url_stands_in_for_both_domains_but_not_the_audience() -> None:
    settings = load_settings(
        **VALID, auth0_management_domain="canonical.eu.auth0.com", auth0_base_url="http://x:1/"
    )
    assert settings.auth0.tenant_url == settings.auth0.management_url == "http://x:1"
    assert settings.auth0.management_audience == "https://canonical.eu.auth0.com/api/v2/"
    assert settings.auth0.issuer == "https://tenant.eu.auth0.com/"


@pytest.mark.parametrize("value", ["https://tenant.eu.auth0.com", "tenant.eu.auth0.com/", "a b"])
def test_a_management_domain_that_is_not_a_host_name_is_named(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**VALID, auth0_management_domain=value)
    assert str(caught.value) == (
        "configuration error: invalid setting(s): AUTH0_MANAGEMENT_DOMAIN: "
        "AUTH0_MANAGEMENT_DOMAIN is a host name like your-tenant.us.auth0.com"
    )


def test_redis_url_without_the_redis_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # import fails as if absent
    with pytest.raises(ConfigError) as caught:
        load_settings(**VALID, redis_url="redis://:pw-5d2e@redis.internal:6379/0")
    message = str(caught.value)
    assert message == (
        "configuration error: invalid setting(s): REDIS_URL: REDIS_URL is set but the redis "
        "package is not installed (pip install 'auth0-bff[redis]'; the image has it)"
    )
    assert "pw-5d2e" not in message
