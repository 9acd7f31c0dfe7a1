"""`.env.example`, the settings' code and the docs agree.

What "agree" means here, precisely:

- `.env.example`, read as `docker run --env-file` reads it (`NAME=value` taken literally,
  `#` lines skipped), assigns only settings; it shows every setting exactly once, as
  `NAME=value` or, for the settings the image sets itself, commented out as `# NAME=value`;
  and the nearest line above each is a comment that says something (not a `# ---` rule).
- Every value shown is empty, or the code's default (compared after parsing, so `3` agrees
  with `3.0`), or belongs to a required setting (a placeholder to replace). Copied as it is,
  the file changes nothing the docs describe as a default.
- An empty variable means "not set" for every setting: the default applies, and a required
  one is reported missing rather than invalid.
- The docs (README.md, docs/*.md) name in backticks only settings that exist (or the few
  other variables and constants listed below); every `NAME=value` they show is a value the
  setting accepts (one with `...` in it shows a shape, not a value); and a default they
  state for a setting is the code's. A stated default is "default X", "default: X" or "X by
  default" within the setting's table row (the row whose first cell is the name) or the
  parenthesis right after its name, where X is a number, on/off/true/false, none/empty or a
  backticked literal; prose there ("patient writes by default") is not read as a value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from app.core.settings import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / ".env.example"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ASSIGNED = re.compile(r"([A-Z][A-Z0-9_]*)=(.*)")
COMMENTED_OUT = re.compile(r"# ([A-Z][A-Z0-9_]*)=(.*)")
# Names the docs give in backticks that are not settings: other programs' variables and the
# code's constants.
NOT_SETTINGS = {
    "PROMETHEUS_MULTIPROC_DIR": "prometheus-client's, which `serve --workers N` sets",
    "FUZZ_EXAMPLES": "tests/test_fuzz.py's",
    "PG_BIN": "the fault benchmarks'",
    "BENCH_ADMIN_URL": "the benchmarks'",
    "INSERT_PATIENT": "a statement in app/patients/repository.py",
    "MAX_ATTEMPTS": "a constant in app/auth0/client.py",
    "FETCHES_PER_COOLDOWN": "a constant in app/auth/tokens.py",
}
# Values the required settings are given where a test builds the settings.
FILLED = {
    "database_url": "postgresql://app@db.internal:5432/bff",
    "auth0_domain": "tenant.eu.auth0.com",
    "auth0_audience": "https://api.example.com",
    "auth0_client_id": "cid",
    "auth0_client_secret": "client-secret-value",
    "app_secret_key": "app-secret-key-value-0123456789abcdef",
}


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)


def example_lines() -> list[str]:
    return EXAMPLE.read_text().splitlines()


def assignments() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in example_lines():
        if (match := ASSIGNED.fullmatch(line)) is not None:
            assert match[1] not in found, f"{match[1]} is assigned twice"
            found[match[1]] = match[2]
    return found


def commented_out() -> dict[str, str]:
    return {
        match[1]: match[2]
        for line in example_lines()
        if (match := COMMENTED_OUT.fullmatch(line)) is not None and match[1] in Settings.env_names()
    }


def fields() -> dict[str, tuple[str, str, Any]]:
    """Every setting's variable: its group, its field and the field's default."""
    found = {}
    for group_name, group in Settings.GROUPS.items():
        for field, env in group.env_names().items():
            info = group.model_fields[field]
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            found[env] = (group_name, field, default)
    return found


def value_of(settings: Settings, env: str) -> Any:
    group, field, _ = fields()[env]
    return getattr(getattr(settings, group), field)


def required() -> list[str]:
    """The settings start-up reports missing when nothing is set."""
    with pytest.raises(ConfigError) as refused:
        Settings(_env_file=None)
    message = str(refused.value)
    assert message.startswith("configuration error: missing required setting(s): "), message
    return message.split(": ", 2)[2].split("; ")[0].split(", ")


# --- .env.example ---------------------------------------------------------------------------


def test_the_required_settings_are_the_ones_without_which_nothing_starts() -> None:
    assert sorted(required()) == sorted(name.upper() for name in FILLED)


def test_every_variable_in_the_example_is_a_setting() -> None:
    assert set(assignments()) - set(Settings.env_names()) == set()


def test_every_setting_is_shown_once_under_a_comment_that_says_something() -> None:
    shown = [*assignments(), *commented_out()]
    assert sorted(shown) == sorted(Settings.env_names())
    lines = example_lines()
    names = set(Settings.env_names())
    for index, line in enumerate(lines):
        match = ASSIGNED.fullmatch(line) or COMMENTED_OUT.fullmatch(line)
        if match is None or match[1] not in names:
            continue
        above = index - 1
        while (m := ASSIGNED.fullmatch(lines[above]) or COMMENTED_OUT.fullmatch(lines[above])) and (
            m[1] in names
        ):
            above -= 1
        comment = lines[above]
        assert comment.startswith("# ") and not comment.startswith("# ---"), match[1]


def test_every_value_shown_is_empty_the_default_or_a_required_placeholder() -> None:
    from_file = Settings(_env_file=EXAMPLE, **FILLED)  # the file as the service reads it
    placeholders = set(required())
    for env, value in assignments().items():
        if value == "" or env in placeholders:
            continue
        default = fields()[env][2]
        assert value_of(from_file, env) == default, f"{env}={value} is not the default {default!r}"
    for env, value in commented_out().items():  # as they would read, uncommented
        default = fields()[env][2]
        parsed = value_of(settings_with(env, value), env)
        assert parsed == default, f"# {env}={value} is not the default {default!r}"
    assert from_file.audit.digests is False


def test_an_empty_variable_is_unset_for_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in Settings.env_names():
        monkeypatch.setenv(env, "")
    with pytest.raises(ConfigError) as refused:
        Settings(_env_file=None)
    assert str(refused.value) == (
        "configuration error: missing required setting(s): " + ", ".join(required())
    )
    settings = Settings(_env_file=None, **FILLED)
    for env, (_, _, default) in fields().items():
        if env.lower() in FILLED:
            continue
        assert value_of(settings, env) == default, env


# --- The docs ---------------------------------------------------------------------------------

BACKTICKED = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?:=([^`]*))?`")
DEFAULT_AFTER = re.compile(r"\bdefault:?\s+(`[^`]*`|[^\s,;:)]+)")
DEFAULT_BEFORE = re.compile(r"(`[^`]*`|[^\s(]+) by default\b")
VALUE = re.compile(r"`[^`]*`|-?\d+(\.\d+)?|on|off|true|false|none|empty", re.IGNORECASE)


def docs_text() -> list[tuple[Path, str]]:
    return [(path, path.read_text()) for path in DOCS]


def settings_with(env: str, text: str) -> Settings:
    return Settings(_env_file=None, **{**FILLED, env.lower(): text})


def test_the_docs_name_only_settings_that_exist() -> None:
    known = set(Settings.env_names()) | set(NOT_SETTINGS)
    unknown = {
        f"{path.name}: {match[1]}"
        for path, text in docs_text()
        for match in BACKTICKED.finditer(text)
        if match[1] not in known
    }
    assert unknown == set()


def test_every_setting_value_the_docs_show_is_accepted() -> None:
    shown = 0
    for path, text in docs_text():
        for match in BACKTICKED.finditer(text):
            shape = match[2] is not None and ("..." in match[2] or "…" in match[2])
            if match[2] is not None and match[1] in Settings.env_names() and not shape:
                shown += 1
                refusal = ""
                try:
                    settings_with(match[1], match[2])
                except ConfigError as exc:  # another setting's rule (a key it needs) is fine
                    refusal = str(exc)
                assert f" {match[1]}: " not in refusal, f"{path.name}: {match[0]}: {refusal}"
    assert shown >= 1


def stated_defaults() -> list[tuple[str, str, str]]:
    """(where, setting, the value as the docs state it) for every default the docs state."""
    names = set(Settings.env_names())
    found = []
    for path, text in docs_text():
        clauses: list[tuple[str, str]] = []
        for line in text.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            first = BACKTICKED.fullmatch(cells[0]) if line.startswith("|") else None
            if first is not None and first[1] in names:
                clauses.append((first[1], " | ".join(cells[1:])))
        for match in re.finditer(r"`([A-Z][A-Z0-9_]+)` \(([^)]*)\)", text.replace("\n", " ")):
            if match[1] in names:
                clauses.append((match[1], match[2]))
        for name, clause in clauses:
            for pattern in (DEFAULT_AFTER, DEFAULT_BEFORE):
                for stated in pattern.finditer(clause):
                    if VALUE.fullmatch(stated[1]):
                        found.append((path.name, name, stated[1]))
    return found


def test_the_defaults_the_docs_state_are_the_codes() -> None:
    stated = stated_defaults()
    assert {name for _, name, _ in stated} >= {
        "AUDIT_DIGESTS",
        "AUDIT_DIGEST_INTERVAL_SECONDS",
        "SESSION_IDLE_SECONDS",
        "MAX_TOKEN_LIFETIME_SECONDS",
    }
    for where, name, value in stated:
        text = value.strip("`")
        default = fields()[name][2]
        if isinstance(default, bool):
            text = {"on": "true", "off": "false"}.get(text.lower(), text)
        text = {"none": "", "empty": ""}.get(text.lower(), text)
        if text == "" and default in (None, [], ""):
            continue
        assert value_of(settings_with(name, text), name) == default, f"{where}: {name} {value}"
