"""An orjson-backed stand-in for the ``json`` module, for python-socketio and its manager.

python-socketio calls ``json.dumps(obj, separators=...)`` and ``json.loads(text)``;
orjson already writes the compact form, so keyword arguments are accepted and ignored.

orjson is stricter than JSON itself in one way the official clients run into:
``JSON.stringify`` writes a lone surrogate (text cut in the middle of an emoji) as the
escape ``\\ud83d``, which is valid JSON, and orjson refuses it. What orjson refuses is
read again by the standard library, and each lone surrogate becomes U+FFFD, as a
browser's UTF-8 encoder does. NaN and Infinity stay refused: JSON has neither.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

JSONDecodeError = json.JSONDecodeError  # orjson's is a subclass

_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(obj: Any, *args: Any, **kwargs: Any) -> str:
    return orjson.dumps(obj).decode()


def loads(text: str | bytes, *args: Any, **kwargs: Any) -> Any:
    """The value of a JSON text; ``ValueError`` (a ``JSONDecodeError``) for anything
    that is not JSON, including nesting deeper than the decoder's limit."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        if isinstance(text, bytes | bytearray | memoryview):
            raise  # bytes that orjson refused are not UTF-8, or not JSON
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise JSONDecodeError("nested too deeply", str(text), 0) from None
    return _without_lone_surrogates(value)


def _no_constant(name: str) -> Any:
    raise JSONDecodeError(f"{name} is not JSON", name, 0)


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        if _SURROGATE.search(value) is None:
            return value
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            _without_lone_surrogates(key): _without_lone_surrogates(item)
            for key, item in value.items()
        }
    return value
