"""Background tasks that are never lost: referenced until done, failures logged; and
what their loops share: a capped backoff, and a stop that cannot be lost."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
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
        """Wait up to ``timeout`` seconds for running tasks, then cancel the rest (and
        wait as long again for them to end)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        await cancel_and_wait(pending, timeout)


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if this task was asked to stop and the request got lost.

    A loop that runs until cancelled calls this once a round. On Python 3.11,
    ``asyncio.wait_for`` drops a cancel that arrives while the call it wraps finishes
    (fixed in 3.12), and redis-py sends every command through such a ``wait_for``: a
    consumer loop reading Redis then went on forever, and the hub's shutdown waited on it.
    The task still counts the request (``Task.cancelling()``), so it is found here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout: float) -> None:
    """Cancel ``tasks`` and wait up to ``timeout`` seconds for them to end.

    A task still running then is logged and left: one stuck loop must not hold a
    shutdown forever (the process is ending anyway).
    """
    tasks = set(tasks)
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        log.error("task %s did not stop within %.1f s of being cancelled", task.get_name(), timeout)


def backoff(base: float, attempt: int, cap: float = math.inf) -> float:
    """Seconds to wait before try ``attempt`` + 1: exponential with full jitter, so
    that clients that failed together do not come back together. Uniform up to
    ``base * 2**attempt`` or ``cap``, whichever is less, and never under ``base / 2``."""
    return max(base / 2, random.uniform(0, min(cap, base * 2**attempt)))


class Backoff:
    """``backoff`` for a reconnect loop: ``wait()`` after each failure, ``reset()``
    after a success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self._first, self._cap, self._attempt = first, cap, 0

    async def wait(self) -> None:
        await asyncio.sleep(backoff(self._first, self._attempt, self._cap))
        self._attempt = min(self._attempt + 1, 32)

    def reset(self) -> None:
        self._attempt = 0


async def every(interval: float, job: Callable[[], Awaitable[None]], name: str) -> None:
    """Run ``job`` every ``interval`` seconds until cancelled; a failing run is only logged."""
    while True:
        raise_if_cancelled()
        await asyncio.sleep(interval)
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed: %s", name, type(exc).__name__)
