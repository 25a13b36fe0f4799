"""Every adjustment of a library's internals, one module per library.

Each module says what it changes and why, and lists in ``UPSTREAM`` the library code
it relies on: what it overrides, wraps or reads, each with a fingerprint of its source.
``tests/unit/test_compat.py`` fails when one of them changes, so that a new release of
the library is read before it is taken. The libraries themselves have an upper bound in
``pyproject.toml`` and a locked version in ``requirements/*.lock``.

To take a new release: raise the bound, run the tests, read the changed upstream code
the failing test names, adjust the patch, and record the new fingerprints
(``python -m hub.compat`` prints them).
"""

from __future__ import annotations

import hashlib
import inspect
import pkgutil


def fingerprint(target: str) -> str:
    """A short digest of the source of ``target`` (``"package.module:Class.method"``)."""
    source = inspect.getsource(pkgutil.resolve_name(target))
    return hashlib.sha256(source.encode()).hexdigest()[:16]
