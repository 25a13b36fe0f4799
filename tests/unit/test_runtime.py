"""hub.compat.asyncio: wait_for: Python 3.12's, in the caller's task."""

from __future__ import annotations

import asyncio
import sys

import pytest

from hub.compat import asyncio as compat_asyncio


async def test_the_tests_run_the_wait_for_the_hub_installs():
    """tests/conftest.py installs it, as `hub serve` does."""
    if sys.version_info < (3, 12):
        assert asyncio.wait_for is compat_asyncio._wait_for
        assert asyncio.tasks.wait_for is compat_asyncio._wait_for


async def test_a_coroutine_runs_in_the_callers_task():
    """Regression: 3.11's wait_for ran it in a task of its own, and each frame engineio
    read took two extra trips round the event loop."""

    async def which_task() -> asyncio.Task[object] | None:
        return asyncio.current_task()

    assert await compat_asyncio._wait_for(which_task(), 5) is asyncio.current_task()


async def test_a_result_and_an_exception_pass_through():
    future = asyncio.get_running_loop().create_future()
    future.set_result(42)
    assert await compat_asyncio._wait_for(future, 5) == 42

    async def fails() -> None:
        raise LookupError("no such thing")

    with pytest.raises(LookupError, match="no such thing"):
        await compat_asyncio._wait_for(fails(), 5)


async def test_a_timeout_cancels_what_was_awaited_and_raises_timeout_error():
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        await compat_asyncio._wait_for(forever(), 0.01)
    assert cancelled.is_set()

    pending = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await compat_asyncio._wait_for(pending, 0.01)
    assert pending.cancelled()


async def test_no_time_left_times_out_at_once_unless_it_is_done():
    done = asyncio.get_running_loop().create_future()
    done.set_result("ready")
    assert await compat_asyncio._wait_for(done, 0) == "ready"
    pending = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await compat_asyncio._wait_for(pending, 0)
    assert pending.cancelled()


async def test_cancelling_the_caller_cancels_what_it_awaited():
    pending = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(compat_asyncio._wait_for(pending, 60))
    async with asyncio.timeout(5):
        while not pending._callbacks:  # type: ignore[attr-defined]  # until it is awaited
            await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pending.cancelled()
