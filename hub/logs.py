"""Logging set-up: one line per record, key=value fields, no message bodies ever."""

from __future__ import annotations

import logging
import sys


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library loggers that would print payloads at DEBUG stay at WARNING.
    # pymongo's command log carries documents (message bodies, phone numbers); twilio's
    # HTTP client logs request parameters; celery's task log shows task arguments.
    for name in ("socketio", "engineio", "aiohttp.access", "pymongo", "twilio",
                 "celery.app.trace", "kombu"):
        logging.getLogger(name).setLevel(logging.WARNING)
