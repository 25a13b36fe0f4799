"""What the benchmarks share: the JWT key of their hubs, core pinning, readiness,
percentiles, and how a run is recorded."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SECRET = "bench-secret-0123456789-0123456789-abcdef"
ROOT = Path(__file__).resolve().parent.parent


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


@dataclass(frozen=True)
class BenchHub:
    url: str
    pid: int
    mongodb_url: str
    redis_url: str


@contextmanager
def bench_hub(env: dict[str, str] | None = None) -> Iterator[BenchHub]:
    """A hub process (on core 0) on embedded SecantusDB and redis-server, in a
    temporary directory, once it is ready; all of it stopped and removed after.
    ``env`` adds to or overrides the hub's environment."""
    from hub.server import embedded

    data = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    mongodb = embedded.start_mongodb(data / "mongodb")
    redis = embedded.start_redis(data / "redis")
    port = embedded.free_port()
    hub_env = {
        **os.environ,
        "HUB_EMBEDDED": "0",
        "HUB_MONGODB_URL": mongodb.url,
        "HUB_REDIS_URL": redis.url,
        "HUB_JWT_SECRET": SECRET,
        "HUB_PORT": str(port),
        "HUB_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    hub = subprocess.Popen([*pin(0), sys.executable, "-m", "hub", "serve"], env=hub_env, cwd=ROOT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health/ready")
        yield BenchHub(f"http://127.0.0.1:{port}", hub.pid, mongodb.url, redis.url)
    finally:
        hub.terminate()
        hub.wait(30)
        redis.stop()
        mongodb.stop()
        shutil.rmtree(data, ignore_errors=True)
