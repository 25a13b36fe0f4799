"""Background tasks that are never lost: referenced until done, failures logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("hub.tasks")


class TaskGroup:
    """Keeps a reference to each task it spawns and logs the ones that fail.

    Unlike ``asyncio.TaskGroup``, one failing task does not cancel the others: these
    are independent fire-and-forget jobs (a presence update, an announcement).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("%s task failed: %s", self._name, type(exc).__name__, exc_info=exc)

    async def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for running tasks, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


async def every(interval: float, job: Callable[[], Awaitable[None]], name: str) -> None:
    """Run ``job`` every ``interval`` seconds until cancelled; a failing run is only logged."""
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed: %s", name, type(exc).__name__)
