"""What the benchmarks share: the JWT key of their hubs, core pinning, readiness and
percentiles."""

from __future__ import annotations

import shutil
import time
import urllib.request

SECRET = "bench-secret-0123456789-0123456789-abcdef"


def pin(core: int) -> list[str]:
    """The command prefix that runs a process on one core (nothing without taskset)."""
    return ["taskset", "-c", str(core)] if shutil.which("taskset") else []


def wait_healthy(url: str, timeout: float = 60) -> None:
    """Poll ``url`` until it answers 2xx; exit the benchmark if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer") from None
            time.sleep(0.2)  # polling a server that is starting, not a test's wait


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
