"""Structured logging. Callers pass identifiers in `extra`, never tokens or PHI.

`serve` writes JSON lines (`JsonFormatter`); `dev` writes readable lines for a terminal
(`ConsoleFormatter`, `configure_logging(console=True)`), with the same fields.

The formatter is also the last line of defence for what callers cannot control: the text of
exceptions. A Postgres error's message and its DETAIL carry the values of the row it failed
on ("Failing row contains (..., jane.doe@example.com, ...)", "Key (email)=(...)"), and
asyncpg's client-side errors quote the argument they could not encode. So wherever such an
exception reaches a log line (a traceback, a `%s` argument, an `extra` value), it is written
as its class, SQLSTATE and the names of the constraint, table and column only.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from types import TracebackType
from typing import Any

import asyncpg
import orjson
from pydantic import ValidationError

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Extras that repeat the message for a terminal (uvicorn's, with escape codes): never written.
_DROPPED = {"color_message"}
# What of a Postgres error names the schema, never the data.
_SCHEMA_NAMES = ("constraint", "table", "column")


def describe_exception(exc: BaseException) -> str:
    """The exception's message as it may be logged: database and validation errors lose
    everything that could quote a value."""
    if isinstance(exc, asyncpg.PostgresError):  # server errors, and arguments asyncpg refused
        parts = [f"SQLSTATE {exc.sqlstate}"]
        for label in _SCHEMA_NAMES:
            name = getattr(exc, f"{label}_name", None)
            if name:
                parts.append(f"{label} {name}")
        return ", ".join(parts)
    if isinstance(exc, ValidationError):
        fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors(include_input=False)})
        return f"{exc.error_count()} validation error(s) for {exc.title}: {', '.join(fields)}"
    return str(exc)


def format_exception(
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> str:
    """A traceback like Python's, its chain included, each message by `describe_exception`."""
    if exc is None:
        return "".join(traceback.format_tb(tb)) + (exc_type.__name__ if exc_type else "")
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    parts: list[str] = []
    for error, link in reversed(chain):
        parts.append("Traceback (most recent call last):\n")
        parts += traceback.format_tb(error.__traceback__)
        message = describe_exception(error)
        parts.append(
            f"{_qualified_name(error)}: {message}\n" if message else f"{_qualified_name(error)}\n"
        )
        if link:
            parts.append(link)
    return "".join(parts).rstrip("\n")


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _qualified_name(error: BaseException) -> str:
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _safe(value: Any) -> Any:
    return describe_exception(value) if isinstance(value, BaseException) else value


def _message(record: logging.LogRecord) -> str:
    """`record.getMessage()`, with exceptions among the message and its arguments made safe."""
    message = str(_safe(record.msg))
    args = record.args
    if not args:
        return message
    if isinstance(args, dict):
        return message % {key: _safe(value) for key, value in args.items()}
    return message % tuple(_safe(value) for value in args)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """What the caller passed through `extra=`, made safe."""
    return {
        key: _safe(value)
        for key, value in vars(record).items()
        if key not in _STANDARD and key not in _DROPPED and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()

    def formatException(self, ei: Any) -> str:
        return format_exception(*ei)


_BARE = re.compile(r"[^\s\"'=]+")


def _plain(value: Any) -> str:
    """A value as `key=value` shows it: bare when it is one word, else JSON."""
    if isinstance(value, str) and _BARE.fullmatch(value):
        return value
    return orjson.dumps(value, default=str).decode()


class ConsoleFormatter(JsonFormatter):
    """One readable line a record, local time: `12:01:02 INFO  app.x  message key=value`;
    a traceback (made safe like JSON's) follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<5} {record.name}  {_message(record)}"
        fields = " ".join(f"{key}={_plain(value)}" for key, value in _extras(record).items())
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure_logging(level: str = "INFO", *, console: bool = False) -> None:
    """Send every logger, uvicorn's included, through one handler on stderr: JSON lines, or
    readable lines with `console` (`dev`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter() if console else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    quiet_chatty_loggers()


# Loggers whose INFO lines a developer's console does not need: the embedded Postgres's
# commands (up to 1,289 characters each), each uvicorn server's start and stop (two servers
# run in `dev`), the pool's connect and disconnect. Their warnings and errors still show.
DEV_QUIET_LOGGERS = ("pgserver", "uvicorn.error", "databases")


class StartupGate(logging.Filter):
    """Drops records below WARNING until `open()`: `dev` opens it once its banner has said
    what start-up did (database, migrations, servers)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.opened or record.levelno >= logging.WARNING

    def open(self) -> None:
        self.opened = True


def configure_dev_logging(level: str = "INFO") -> StartupGate:
    """`dev`'s console: readable lines, `DEV_QUIET_LOGGERS` at WARNING, start-up's INFO left
    out until the returned gate opens. At DEBUG everything shows."""
    configure_logging(level, console=True)
    gate = StartupGate()
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        gate.open()
    else:
        for name in DEV_QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(gate)
    return gate


def quiet_chatty_loggers() -> None:
    """Loggers whose INFO lines would say more than we allow."""
    # Our middleware writes the access log; uvicorn's would duplicate it (with query strings).
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every outbound URL at INFO; Management API paths carry user ids.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
