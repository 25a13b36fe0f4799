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
def bench_hubs(
    count: int = 1,
    env: dict[str, str] | None = None,
    *,
    tree: Path = ROOT,
    stores_core: int | None = None,
    cluster: bool = False,
) -> Iterator[list[BenchHub]]:
    """``count`` hub processes (on core 0) of checkout ``tree`` on one embedded
    SecantusDB and redis-server, in a temporary directory, once all are ready; all of
    it stopped and removed after. ``env`` adds to or overrides the hubs' environment;
    ``stores_core`` pins the stores to that core (where `taskset` exists); ``cluster``:
    the hubs' Redis is a cluster of three masters with a replica each (the single
    redis-server stays Celery's broker)."""
    from hub.server import embedded

    data = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    mongodb = embedded.start_mongodb(data / "mongodb")
    redis = embedded.start_redis(data / "redis")
    nodes = embedded.start_redis_cluster(data / "cluster") if cluster else None
    redis_env = {"HUB_REDIS_URL": redis.url}
    if nodes is not None:
        redis_env = {"HUB_REDIS_URL": nodes.url, "HUB_CELERY_BROKER_URL": redis.url}
    if stores_core is not None and shutil.which("taskset"):
        for child in (mongodb, redis, *(nodes.nodes if nodes else [])):
            subprocess.run(
                ["taskset", "-a", "-p", "-c", str(stores_core), str(child.process.pid)],
                check=False,
                capture_output=True,
            )
    hubs: list[tuple[subprocess.Popen[bytes], BenchHub]] = []
    try:
        for _ in range(count):
            port = embedded.free_port()
            hub_env = {
                **os.environ,
                "HUB_EMBEDDED": "0",
                "HUB_MONGODB_URL": mongodb.url,
                **redis_env,
                "HUB_JWT_SECRET": SECRET,
                "HUB_PORT": str(port),
                "HUB_LOG_LEVEL": "WARNING",
                **(env or {}),
            }
            # cwd: `python -m hub` imports the hub of that checkout.
            process = subprocess.Popen(
                [*pin(0), sys.executable, "-m", "hub", "serve"], env=hub_env, cwd=tree
            )
            url = f"http://127.0.0.1:{port}"
            hubs.append((process, BenchHub(url, process.pid, mongodb.url, redis.url)))
            wait_healthy(f"{url}/health/ready")
        yield [hub for _, hub in hubs]
    finally:
        for process, _ in hubs:
            process.terminate()
        for process, _ in hubs:
            process.wait(30)
        if nodes is not None:
            nodes.stop()
        redis.stop()
        mongodb.stop()
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def bench_hub(env: dict[str, str] | None = None) -> Iterator[BenchHub]:
    """One hub of this checkout on its own embedded stores (``bench_hubs``)."""
    with bench_hubs(1, env) as (hub,):
        yield hub
