"""The hub's one reading of the wall clock.

Every part of the hub, its workers and its background jobs asks ``clock.now()`` (an
aware datetime in UTC) or ``clock.timestamp()`` (seconds since the epoch) for the time
of day; none calls ``datetime.now`` or ``time.time`` itself. A test or a tool sets
another clock with ``use(...)`` and every reader follows it, so a date or an hour that
a behaviour depends on is chosen by the test, not by the day the suite runs.

Durations (timeouts, rate limits, leases measured in-process) use ``time.monotonic``,
which no calendar can move, and stay outside this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, aware, in UTC."""
        ...


class SystemClock:
    """The operating system's clock (what libfaketime moves in ``./dev test --clocks``)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that stands still until told to move: for tests and benchmarks."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, instant: datetime) -> None:
        self._now = instant.astimezone(UTC)

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


_current: Clock = SystemClock()


def now() -> datetime:
    """The current instant from the clock in use, aware, in UTC."""
    return _current.now()


def timestamp() -> float:
    """``now()`` as seconds since the epoch (JWT ``iat``/``exp``, signed links)."""
    return _current.now().timestamp()


@contextmanager
def use(clock: Clock) -> Iterator[Clock]:
    """Make ``clock`` the process's clock until the block ends."""
    global _current
    previous, _current = _current, clock
    try:
        yield clock
    finally:
        _current = previous
