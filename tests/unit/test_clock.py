"""The hub's one clock: every reader of the time of day goes through hub.core.clock."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.core import clock

ROOT = Path(__file__).resolve().parents[2]
# What reads the operating system's wall clock directly.
DIRECT = re.compile(r"datetime\.now\(|datetime\.utcnow\(|time\.time\(|date\.today\(|= time\.time\b")


def test_only_the_clock_reads_the_time_of_day():
    """Tests that set the clock (and ``./dev test --clocks``) only prove something if
    the hub, its workers and its jobs all read the one they set."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for part in ("hub", "handlers", "channels", "storage", "workers")
        for path in sorted((ROOT / part).rglob("*.py"))
        if path != ROOT / "hub/core/clock.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if DIRECT.search(line)
    ]
    assert offenders == []


def test_a_clock_in_use_is_read_everywhere_and_put_back():
    start = datetime(2031, 3, 30, 0, 59, 30, tzinfo=UTC)
    outside = clock.now()
    with clock.use(clock.ManualClock(start)) as manual:
        assert isinstance(manual, clock.ManualClock)
        assert clock.now() == start and clock.timestamp() == start.timestamp()
        manual.advance(45)
        assert clock.now() == start + timedelta(seconds=45)
    assert clock.now() - outside < timedelta(minutes=5)


def test_a_manual_clock_needs_an_aware_instant():
    with pytest.raises(ValueError):
        clock.ManualClock(datetime(2031, 1, 1))  # noqa: DTZ001
