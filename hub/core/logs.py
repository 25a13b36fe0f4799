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
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Library loggers that would print payloads at DEBUG stay at WARNING.
# pymongo's command log carries documents (message bodies, phone numbers); twilio's
# HTTP client logs request parameters; celery's task log shows task arguments.
QUIET = (
    "socketio",
    "engineio",
    "aiohttp.access",
    "pymongo",
    "twilio",
    "celery.app.trace",
    "kombu",
    "httpx",
    "httpcore",
)

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


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
    # pypdf warns of every repair it makes while reading an uploaded PDF: the hub's own
    # line says what came of the check.
    logging.getLogger("pypdf").setLevel(logging.ERROR)


class Throttle:
    """Says when a repeated occurrence is worth a log line: the first time, then at
    most once per ``interval`` seconds, with how many happened since the last line.

    A client can make the hub refuse things as fast as it can send them; one line per
    refusal would let it fill the disk.
    """

    __slots__ = ("interval", "_clock", "_count", "_logged_at")

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._count = 0
        self._logged_at: float | None = None

    def note(self) -> int:
        """Count one occurrence; the number to report now, or 0 to stay silent."""
        self._count += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self.interval:
            return 0
        count, self._count, self._logged_at = self._count, 0, now
        return count


class ClientFaultLines(logging.Filter):
    """For the loggers of python-socketio and python-engineio: a record with a
    traceback becomes one WARNING line naming the exception's type, and repeats of
    a line are throttled.

    What reaches these loggers is what a client sent that the library could not
    handle (an undecodable polling body, an unknown packet); the hub answers or closes
    where it can, and about twenty lines of traceback per bad frame would only let a
    client fill the log.
    """

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self._interval = interval
        self._throttles: dict[str, Throttle] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            kind = record.exc_info[0].__name__ if record.exc_info[0] else "Exception"
            record.msg, record.args = f"{record.getMessage()} ({kind})", None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        key = str(record.msg)[:120]
        throttle = self._throttles.get(key)
        if throttle is None:
            if len(self._throttles) > 1000:  # messages that name sessions never repeat
                self._throttles.clear()
            throttle = self._throttles[key] = Throttle(self._interval)
        count = throttle.note()
        if count > 1:
            record.msg, record.args = f"{record.getMessage()} (x{count})", None
        return count > 0


def library_logger(name: str) -> logging.Logger:
    """The logger to hand python-socketio or python-engineio (``socketio.server``,
    ``engineio.server``): given a logger, they add no stream handler of their own."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, ClientFaultLines) for f in logger.filters):
        logger.addFilter(ClientFaultLines())
    return logger
