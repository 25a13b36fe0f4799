"""The library code the hub's patches rely on is the code they were written against.

Each module of ``hub.compat`` lists what it overrides, wraps or reads, with a
fingerprint of its source. A new release that changes one of them fails here, naming
it, before anything subtler fails in production; see ``hub/compat/__init__.py`` for
what to do then.
"""

from __future__ import annotations

from importlib.metadata import version
from types import ModuleType

import pytest
from packaging.requirements import Requirement

from hub.compat import asyncio, engineio, fingerprint, socketio

PATCHED = {"hub.compat.engineio": "python-engineio", "hub.compat.socketio": "python-socketio"}


@pytest.mark.parametrize("module", [asyncio, engineio, socketio], ids=lambda m: m.__name__)
def test_upstream_code_is_what_the_patch_was_written_against(module: ModuleType) -> None:
    changed = {
        target: (recorded, fingerprint(target))
        for target, recorded in module.UPSTREAM.items()
        if fingerprint(target) != recorded
    }
    assert not changed, (
        f"{module.__name__} relies on library code that changed: {sorted(changed)}. "
        "Read the new code, adjust the patch, then record `python -m hub.compat`'s output."
    )


def test_every_patched_library_has_an_upper_bound() -> None:
    """A patch of internals is only safe within the releases it was checked against."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    bounds = {
        Requirement(spec).name: Requirement(spec).specifier
        for spec in pyproject["project"]["dependencies"]
    }
    for module, library in PATCHED.items():
        specifier = bounds[library]
        assert any(s.operator in ("<", "<=", "~=", "==") for s in specifier), (module, specifier)
        assert version(library) in specifier, (library, version(library), specifier)
