"""A PDF's active content, as a PDF reader sees it: parsed, not searched.

The upload's raw bytes are searched as they stream in (``inspect.py``), but a search
misses what the format compresses or escapes: an ``/OpenAction`` whose JavaScript
sits in a compressed object stream, or a name written ``/J#61vaScript``. So a PDF is
also parsed with pypdf before it is released: every object is read, those inside
object streams included, with its names decoded, and the PDF is refused when any
dictionary or array names active content (:data:`ACTIVE`) as a key or a value.

Bounds: pypdf caps each stream's decompressed size (75 MB, ``pypdf.filters``); the
walk reads at most :data:`MAX_OBJECTS` objects and gives up at its deadline. A PDF
that cannot be parsed, or that is encrypted with a password (its objects cannot be
read), is refused too: what cannot be checked is not served.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, BinaryIO

from pypdf import PdfReader
from pypdf.errors import PyPdfError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject

# Names of what acts rather than shows: scripts, launching programs, files carried
# inside, rich media and XML forms (which script). Compared without case.
ACTIVE = frozenset(
    name.lower()
    for name in (
        "/JavaScript",
        "/JS",
        "/Launch",
        "/EmbeddedFile",
        "/EmbeddedFiles",
        "/RichMedia",
        "/XFA",
    )
)
MAX_OBJECTS = 200_000


class PdfRefused(Exception):
    """Why the PDF is not served, in words for its uploader."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check(path: Path, timeout: float) -> None:
    """Raise :class:`PdfRefused` if the PDF at ``path`` holds active content, cannot be
    parsed, is password-protected, or is too large to check within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    # An open file, not the path: given a path, pypdf reads the whole file into memory
    # first, a second copy beside the objects it parses.
    with path.open("rb") as handle:
        _check(handle, deadline)


def _check(handle: BinaryIO, deadline: float) -> None:
    reader: PdfReader | None = None
    try:
        reader = PdfReader(handle, strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise PdfRefused("password-protected PDFs are not accepted")
        seen: set[int] = set()
        _walk(reader.trailer, seen, deadline)
        ids = _object_ids(reader)
        if len(ids) > MAX_OBJECTS:
            raise PdfRefused("the PDF has too many objects to check")
        for number, generation in ids:
            _walk(reader.get_object(IndirectObject(number, generation, reader)), seen, deadline)
    except PdfRefused:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError):
        raise PdfRefused("the PDF cannot be read") from None
    finally:
        if reader is not None:
            # The parsed objects, stream data included, go now: the reader sits in
            # reference cycles that only the cyclic collector would break, later.
            reader.resolved_objects.clear()


def _object_ids(reader: PdfReader) -> list[tuple[int, int]]:
    """Every object the cross-reference data names: direct entries and those stored
    in object streams (generation 0)."""
    ids = {
        (number, generation) for generation, entries in reader.xref.items() for number in entries
    }
    ids.update((number, 0) for number in reader.xref_objStm)
    return sorted(ids)


def _walk(obj: Any, seen: set[int], deadline: float) -> None:
    """Look at every name in ``obj``, its dictionaries and arrays (not following
    references: each indirect object is visited from the cross-reference data)."""
    stack = [obj]
    while stack:
        current = stack.pop()
        if isinstance(current, IndirectObject) or id(current) in seen:
            continue
        if isinstance(current, DictionaryObject):
            seen.add(id(current))
            if time.monotonic() > deadline:
                raise PdfRefused("the PDF took too long to check")
            for key, value in current.items():
                if str(key).lower() in ACTIVE:
                    raise PdfRefused("the PDF holds active content (scripts or actions)")
                stack.append(value)
        elif isinstance(current, ArrayObject):
            seen.add(id(current))
            stack.extend(current)
        elif isinstance(current, NameObject) and str(current).lower() in ACTIVE:
            raise PdfRefused("the PDF holds active content (scripts or actions)")
