"""Cookie-session settings: off by default, and when on, everything it needs or one line."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet

from app.core.settings import ConfigError, load_settings

BASE = {
    "database_url": "postgresql://app@db.internal:5432/bff",
    "auth0_domain": "tenant.eu.auth0.com",
    "auth0_audience": "https://api.example.com",
    "auth0_client_id": "cid",
    "auth0_client_secret": "super-secret-value",
    "app_secret_key": "0123456789abcdef0123456789abcdef-test",
    "_env_file": None,
}
KEY = Fernet.generate_key().decode()
ON = {
    "session_client_id": "web-client",
    "session_client_secret": "web-secret-value",
    "public_url": "https://app.example.com/",
    "session_encryption_key": KEY,
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SESSION_CLIENT_ID", "SESSION_CLIENT_SECRET", "PUBLIC_URL", "LOGOUT_RETURN_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SESSION_ENCRYPTION_KEY", raising=False)


def _error(**values: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(**BASE, **values)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_off_by_default() -> None:
    settings = load_settings(**BASE)
    assert settings.sessions.enabled is False
    assert settings.sessions.idle_seconds == 8 * 3600
    assert settings.sessions.absolute_seconds == 7 * 86_400


def test_on_with_everything_it_needs() -> None:
    settings = load_settings(**BASE, **ON)
    assert settings.sessions.enabled is True
    assert settings.server.public_url == "https://app.example.com"
    assert KEY not in repr(settings) and "web-secret-value" not in repr(settings)


@pytest.mark.parametrize(
    "missing", ["session_client_secret", "public_url", "session_encryption_key"]
)
def test_a_client_id_without_what_it_needs_is_one_line_naming_it(missing: str) -> None:
    values = {k: v for k, v in ON.items() if k != missing}
    message = _error(**values)
    assert "SESSION_CLIENT_ID turns cookie sessions on, which needs" in message
    assert missing.upper() in message


def test_several_keys_for_rotation() -> None:
    keys = f"{Fernet.generate_key().decode()}, {KEY}"
    assert load_settings(**BASE, **{**ON, "session_encryption_key": keys}).sessions.enabled


@pytest.mark.parametrize("keys", ["not-a-key", f"{KEY},short", "", f"{KEY},,"])
def test_a_bad_encryption_key_is_refused_without_quoting_it(keys: str) -> None:
    if not keys:  # empty means unset, which cookie mode needs
        assert "SESSION_ENCRYPTION_KEY" in _error(**{**ON, "session_encryption_key": keys})
        return
    message = _error(**{**ON, "session_encryption_key": keys})
    assert "SESSION_ENCRYPTION_KEY" in message and "not a Fernet key" in message
    assert KEY not in message


@pytest.mark.parametrize(
    "url",
    ["http://app.example.com", "https://app.example.com/base", "ftp://x", "https://a.b/?q=1"],
)
def test_public_url_is_an_https_origin(url: str) -> None:
    assert "PUBLIC_URL" in _error(**{**ON, "public_url": url})


def test_plain_http_is_allowed_for_localhost_only() -> None:
    settings = load_settings(**BASE, **{**ON, "public_url": "http://localhost:8000"})
    assert settings.server.public_url == "http://localhost:8000"


def test_idle_may_not_outlast_absolute() -> None:
    message = _error(**ON, session_idle_seconds=7200, session_absolute_seconds=3600)
    assert "SESSION_IDLE_SECONDS must not exceed SESSION_ABSOLUTE_SECONDS" in message


def test_a_bad_client_id_is_refused() -> None:
    assert "SESSION_CLIENT_ID" in _error(**{**ON, "session_client_id": "web client/1"})


def test_the_bounds_default_to_20_per_address_10_000_pending_and_10_sessions_a_user() -> None:
    sessions = load_settings(**BASE, **ON).sessions
    assert (sessions.max_pending_per_address, sessions.max_pending) == (20, 10_000)
    assert sessions.max_per_user == 10


def test_the_bounds_are_read_from_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSION_MAX_PENDING_PER_ADDRESS", "5")
    monkeypatch.setenv("SESSION_MAX_PENDING", "500")
    monkeypatch.setenv("SESSION_MAX_PER_USER", "3")
    sessions = load_settings(**BASE, **ON).sessions
    assert (sessions.max_pending_per_address, sessions.max_pending, sessions.max_per_user) == (
        5,
        500,
        3,
    )


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"session_max_pending_per_address": 0}, "SESSION_MAX_PENDING_PER_ADDRESS"),
        ({"session_max_pending": 0}, "SESSION_MAX_PENDING"),
        ({"session_max_per_user": 0}, "SESSION_MAX_PER_USER"),
        ({"session_max_per_user": 1001}, "SESSION_MAX_PER_USER"),
        (
            {"session_max_pending_per_address": 50, "session_max_pending": 10},
            "SESSION_MAX_PENDING_PER_ADDRESS must not exceed SESSION_MAX_PENDING",
        ),
    ],
)
def test_a_bound_out_of_range_is_one_line_naming_it(values: dict[str, int], named: str) -> None:
    assert named in _error(**ON, **values)


@pytest.mark.parametrize(
    "url",
    [
        "https://www.hospital.example/signed-out",
        "https://app.example.com/",
        "http://localhost:3000/bye",
    ],
)
def test_logout_return_url_may_be_any_https_page(url: str) -> None:
    settings = load_settings(**BASE, **ON, logout_return_url=url)
    assert settings.sessions.logout_return_url == url


def test_logout_return_url_unset_is_empty() -> None:
    assert load_settings(**BASE, **ON, logout_return_url="").sessions.logout_return_url is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://www.hospital.example/", "an https URL (http only for localhost)"),
        ("/signed-out", "an https URL (http only for localhost)"),
        ("javascript:alert(1)", "an https URL (http only for localhost)"),
        ("https:///path", "an absolute URL with a host and no credentials or fragment"),
        (
            "https://u:p@app.example.com/",
            "an absolute URL with a host and no credentials or fragment",
        ),
        (
            "https://app.example.com/#x",
            "an absolute URL with a host and no credentials or fragment",
        ),
    ],
)
def test_a_bad_logout_return_url_is_one_line(url: str, reason: str) -> None:
    assert _error(**ON, logout_return_url=url) == (
        f"configuration error: invalid setting(s): LOGOUT_RETURN_URL: {reason}"
    )
