"""Logging set-up: one line per record, JSON by default, never a message body.

Every line carries the id of what is being handled when there is one: ``request_id``
for a Socket.IO event or an HTTP request, set in a context variable by the router and
the HTTP middleware, so the lines of one event can be found together. Records are
written by the standard ``logging`` module; ``HUB_LOG_FORMAT=text`` prints them for a
person instead.

What goes in a message is the caller's duty: ids, event names, error codes and
counts. Library loggers that would print payloads are held at WARNING.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                        default=None)

# Library loggers that would print payloads at DEBUG stay at WARNING.
# pymongo's command log carries documents (message bodies, phone numbers); twilio's
# HTTP client logs request parameters; celery's task log shows task arguments.
QUIET = ("socketio", "engineio", "aiohttp.access", "pymongo", "twilio", "celery.app.trace",
         "kombu", "httpx", "httpcore")

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id"?, "exc"?, ...extra}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            line["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            # The exception's type and frames, not its text: that may quote user content.
            line["exc"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = request_id.get()
        return f"{text} request_id={rid}" if rid is not None else text

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return f"{ei[0].__name__ if ei[0] else 'Exception'} (text withheld)"


def configure(level: str, fmt: str = "json", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
