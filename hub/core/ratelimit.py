"""Token buckets: a flooding client is told to slow down; everyone else is unaffected."""

from __future__ import annotations

import time
from collections.abc import Callable

from hub.core.settings import RateLimit


class TokenBucket:
    """``limit.rate`` tokens per second, at most ``limit.burst`` saved up."""

    __slots__ = ("_rate", "_burst", "_tokens", "_stamp", "_clock")

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = limit.rate
        self._burst = limit.burst
        self._tokens = limit.burst
        self._clock = clock
        self._stamp = clock()

    def take(self) -> bool:
        """Spend one token if there is one; never blocks."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
