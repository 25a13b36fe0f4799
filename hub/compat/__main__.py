"""Print the current fingerprints of the upstream code each compat module relies on."""

from __future__ import annotations

from hub.compat import asyncio, engineio, fingerprint, socketio

for module in (asyncio, engineio, socketio):
    print(f"{module.__name__}:")
    for target in module.UPSTREAM:
        print(f'    "{target}": "{fingerprint(target)}",')
