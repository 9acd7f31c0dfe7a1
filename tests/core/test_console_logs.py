"""`dev`'s console: readable lines with the same fields and the same redaction as the JSON
that `serve` writes; start-up chatter left out until the banner; chatty libraries quiet."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator

import asyncpg
import orjson
import pytest

from app.core.logs import (
    DEV_QUIET_LOGGERS,
    ConsoleFormatter,
    JsonFormatter,
    configure_dev_logging,
)

EMAIL = "jane.doe@example.com"


def _record(
    name: str = "app.patients", level: int = logging.INFO, msg: str = "request", **extra: object
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def test_a_console_line_is_time_level_logger_message_and_fields() -> None:
    line = ConsoleFormatter().format(
        _record(method="GET", path="/api/me", status=200, note="two words", ids=[1, 2])
    )
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d INFO  app\.patients  request method=GET path=/api/me status=200 "
        r'note="two words" ids=\[1,2\]',
        line,
    ), line


def test_uvicorns_color_message_is_written_by_neither_formatter() -> None:
    record = _record(
        "uvicorn.error",
        msg="Started server process [%d]",
        color_message="Started server process [\x1b[36m%d\x1b[0m]",
    )
    record.args = (42,)
    console = ConsoleFormatter().format(record)
    entry = orjson.loads(JsonFormatter().format(record))
    assert console.endswith("INFO  uvicorn.error  Started server process [42]")
    assert "color_message" not in console and "\x1b" not in console
    assert "color_message" not in entry and entry["msg"] == "Started server process [42]"


def test_a_console_traceback_is_as_safe_as_the_json_one() -> None:
    error = asyncpg.UniqueViolationError(
        f'duplicate key value violates unique constraint "u"\nDETAIL:  Key (email)=({EMAIL})'
    )
    try:
        raise error
    except asyncpg.UniqueViolationError:
        record = _record(level=logging.ERROR, msg="failed: %s", error=error)
        record.args = (error,)
        record.exc_info = sys.exc_info()
    text = ConsoleFormatter().format(record)
    assert EMAIL not in text and "DETAIL" not in text
    assert "failed: SQLSTATE 23505" in text.splitlines()[0]
    assert "Traceback (most recent call last):" in text


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_dev_logging rewires the root logger: put everything back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    named = {
        name: (logging.getLogger(name).level, logging.getLogger(name).handlers[:])
        for name in (*DEV_QUIET_LOGGERS, "uvicorn")
    }
    propagate = {name: logging.getLogger(name).propagate for name in named}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (old_level, old_handlers) in named.items():
        logger = logging.getLogger(name)
        logger.setLevel(old_level)
        logger.handlers[:] = old_handlers
        logger.propagate = propagate[name]


@pytest.mark.usefixtures("restore_logging")
def test_dev_leaves_start_up_info_out_until_the_banner(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gate = configure_dev_logging("INFO")
    app = logging.getLogger("app.core.db")
    app.info("migration applied", extra={"version": "0001_foundation"})
    logging.getLogger("pgserver").info("Running commandline: initdb ...")
    logging.getLogger("uvicorn.error").info("Started server process [1]")
    app.warning("something a developer should see")
    held = capsys.readouterr().err.splitlines()
    assert len(held) == 1 and held[0].endswith(
        "WARNING app.core.db  something a developer should see"
    )

    gate.open()  # the banner has printed
    logging.getLogger("app.http.middleware").info("request", extra={"status": 200})
    logging.getLogger("pgserver").info("Running commandline: pg_ctl stop")
    logging.getLogger("databases").info("Disconnected from database")
    logging.getLogger("uvicorn.error").info("Shutting down")
    logging.getLogger("pgserver").warning("postgres did not stop cleanly")
    after = capsys.readouterr().err.splitlines()
    assert [line[9:] for line in after] == [
        "INFO  app.http.middleware  request status=200",
        "WARNING pgserver  postgres did not stop cleanly",
    ]


@pytest.mark.usefixtures("restore_logging")
def test_dev_at_debug_shows_everything(capsys: pytest.CaptureFixture[str]) -> None:
    configure_dev_logging("DEBUG")
    logging.getLogger("pgserver").info("Running commandline: initdb ...")
    logging.getLogger("app.core.db").debug("detail")
    lines = capsys.readouterr().err.splitlines()
    assert [line[9:] for line in lines] == [
        "INFO  pgserver  Running commandline: initdb ...",
        "DEBUG app.core.db  detail",
    ]
