"""What the benchmarks share: the JWT key of their hubs, core pinning, readiness,
percentiles, and how a run is recorded."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user and system) used so far by a process and its live children, from
    /proc (None where there is none)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name, in parentheses, may hold spaces
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return own + sum(cpu_seconds(int(child)) or 0.0 for child in children)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stamp() -> dict[str, str]:
    """Where and when a run was measured, for its record."""
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def record_run(out: Path, report: dict[str, Any], key: Callable[[dict[str, Any]], Any]) -> None:
    """Write ``report`` into ``out``'s runs, replacing the run with the same key, and
    print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()).get("runs", []) if out.exists() else []
    runs = [run for run in runs if key(run) != key(report)] + [report]
    runs.sort(key=key)
    out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    for name, value in report.items():
        print(f"{name:>24}  {value}")
