"""Background loops: a cancel reaches them even when a call below them dropped it, and a
loop that will not stop does not hold the shutdown."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hub.core.tasks import cancel_and_wait, every
from tests.support.hubs import cancel_stops


async def dropping_cancel(entered: asyncio.Event) -> None:
    """The first time, waits until cancelled, then returns as if nothing happened: what
    Python 3.11's ``asyncio.wait_for`` does to a cancel that arrives as its call ends."""
    if entered.is_set():
        return
    entered.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        pass


async def test_every_stops_when_its_job_dropped_the_cancel():
    """Regression: the presence heartbeat ran on after its cancel was dropped, and the
    shutdown awaited it without end."""
    entered = asyncio.Event()
    task = asyncio.create_task(every(0.01, lambda: dropping_cancel(entered), "probe"))
    await asyncio.wait_for(entered.wait(), 1.0)
    await cancel_stops(task, timeout=1.0)


async def test_cancel_and_wait_leaves_a_task_that_will_not_stop(
    caplog: pytest.LogCaptureFixture,
):
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    polite = asyncio.create_task(asyncio.Event().wait(), name="polite")
    stuck = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)  # both started
    with caplog.at_level(logging.ERROR, logger="hub.tasks"):
        await asyncio.wait_for(cancel_and_wait([polite, stuck], timeout=0.05), 1.0)
    assert polite.cancelled() and not stuck.done()
    assert "stubborn did not stop" in caplog.text and "polite" not in caplog.text
    release.set()
    await stuck


def test_backoff_is_jittered_and_capped():
    from hub.core.tasks import backoff

    delays = {backoff(0.1, 30, cap=5.0) for _ in range(100)}
    assert max(delays) <= 5.0 and min(delays) >= 0.05
    assert len(delays) > 1  # jittered: clients that failed together spread out
