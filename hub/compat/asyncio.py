"""asyncio: ``wait_for`` as Python 3.12 has it, on Python 3.11.

3.11's runs the awaitable in a task of its own and wakes the caller through two
callbacks: three trips round the event loop where one does. engineio waits on each
incoming frame this way, redis-py and PyMongo on each command, and each trip waits
behind whatever else is ready to run. 3.12's (CPython gh-96764) awaits in the caller's
task under ``asyncio.timeout``, with the same results, timeouts and cancellation.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

# What is replaced, as it was before: 3.11's ``wait_for`` (nothing is touched on 3.12).
ORIGINAL_WAIT_FOR = asyncio.tasks.wait_for
UPSTREAM = (
    {"hub.compat.asyncio:ORIGINAL_WAIT_FOR": "2e3efae791fd8896"}
    if sys.version_info < (3, 12)
    else {}
)


def backport_wait_for() -> None:
    """On Python 3.11, make ``asyncio.wait_for`` the one of Python 3.12; call before
    the event loop starts. Nothing to do on 3.12 and later."""
    if sys.version_info < (3, 12):
        asyncio.wait_for = asyncio.tasks.wait_for = _wait_for


async def _wait_for(fut: Any, timeout: float | None) -> Any:
    """``asyncio.wait_for`` as Python 3.12 has it."""
    if timeout is not None and timeout <= 0:
        fut = asyncio.ensure_future(fut)
        if fut.done():
            return fut.result()
        fut.cancel()
        await asyncio.wait({fut})  # until it has stopped
        try:
            return fut.result()
        except asyncio.CancelledError as exc:
            raise TimeoutError from exc
    async with asyncio.timeout(timeout):
        return await fut
