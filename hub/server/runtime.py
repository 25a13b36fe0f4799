"""What the hub's processes set up about themselves: ``asyncio.wait_for`` before the
event loop starts, and the garbage collector once they are ready to work."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any


def tune_gc() -> None:
    """Keep the cyclic collector's pauses out of event latency; call once start-up is done.

    What exists by then lives as long as the process, so it is frozen out of every later
    collection; and the youngest generation is collected every 20,000 allocations
    instead of 700, as the hub allocates many short-lived objects per event. In the
    appointment benchmark this took p99 at 50 events/s from about 16 ms to 10 ms.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def backport_wait_for() -> None:
    """On Python 3.11, make ``asyncio.wait_for`` the one of Python 3.12 (CPython
    gh-96764); call before the event loop starts. Nothing to do on 3.12 and later.

    3.11's runs the awaitable in a task of its own and wakes the caller through two
    callbacks: three trips round the event loop where one does. engineio waits on each
    incoming frame this way, redis-py and PyMongo on each command, and each trip waits
    behind whatever else is ready to run. 3.12's awaits in the caller's task under
    ``asyncio.timeout``, with the same results, timeouts and cancellation.
    """
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
