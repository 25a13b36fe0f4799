"""An orjson-backed stand-in for the ``json`` module, for python-socketio and its manager.

python-socketio calls ``json.dumps(obj, separators=...)`` and ``json.loads(text)``;
orjson already writes the compact form, so keyword arguments are accepted and ignored.
"""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(obj: Any, *args: Any, **kwargs: Any) -> str:
    return orjson.dumps(obj).decode()


def loads(text: str | bytes, *args: Any, **kwargs: Any) -> Any:
    return orjson.loads(text)
