"""What each clinic of a hub costs while nobody uses it.

A hub process (``python -m hub serve``) on an embedded SecantusDB and redis-server is
started with N clinics (``default`` and N-1 in ``HUB_TENANTS``), and measured:

* start-up: from the process's start to ``/health/ready`` answering 200, twice: the
  first start on empty stores (every clinic's database gets its indexes), then a
  restart, as a hub of a running fleet starts (the registry says the indexes exist);
* idle, after the restart: CPU seconds of the hub, of SecantusDB and of redis-server
  over 30 seconds with no client (the hub holds the sweep lease, so its rounds of the
  idle clinics are counted), the hub's resident memory, and the connections Redis
  counts.

    .venv/bin/python -m bench.tenants --clinics 1 10 100 1000 [--cluster]

Prints a table and records each run in bench/results/tenants.json, one entry per N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import SECRET, cpu_seconds, record_run, stamp, wait_healthy  # noqa: E402

IDLE_SECONDS = 30.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(clinics: int, cluster: bool) -> dict[str, Any]:
    from redis import Redis

    from hub.server import embedded

    data = Path(tempfile.mkdtemp(prefix="hub-bench-tenants-"))
    mongodb = embedded.start_mongodb(data / "mongodb")
    redis = embedded.start_redis(data / "redis")  # with a cluster: Celery's broker
    nodes = embedded.start_redis_cluster(data / "cluster") if cluster else None
    redis_nodes = nodes.masters if nodes else [redis]
    port = embedded.free_port()
    tenants = [{"tenant_id": f"clinic-{n}"} for n in range(1, clinics)]
    env = {
        **os.environ,
        "HUB_EMBEDDED": "0",
        "HUB_MONGODB_URL": mongodb.url,
        "HUB_MONGODB_DB": "bench_tenants",
        "HUB_REDIS_URL": nodes.url if nodes else redis.url,
        "HUB_CELERY_BROKER_URL": redis.url,
        "HUB_JWT_SECRET": SECRET,
        "HUB_PORT": str(port),
        "HUB_LOG_LEVEL": "WARNING",
        "HUB_TENANTS": json.dumps(tenants),
    }
    ready = f"http://127.0.0.1:{port}/health/ready"
    began = time.perf_counter()
    hub = subprocess.Popen([sys.executable, "-m", "hub", "serve"], env=env, cwd=ROOT)
    try:
        wait_healthy(ready, timeout=300)
        first_startup = time.perf_counter() - began
        hub.terminate()
        hub.wait(60)
        began = time.perf_counter()
        hub = subprocess.Popen([sys.executable, "-m", "hub", "serve"], env=env, cwd=ROOT)
        wait_healthy(ready, timeout=300)
        startup = time.perf_counter() - began
        pids = {"hub": hub.pid, "mongodb": mongodb.process.pid}
        pids.update((f"redis{n}", node.process.pid) for n, node in enumerate(redis_nodes))
        before = {name: cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
        time.sleep(IDLE_SECONDS)  # the load measured is the idle one: nothing to wait for
        after = {name: cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
        cpu = {name: 100 * (after[name] - before[name]) / IDLE_SECONDS for name in pids}
        connections = 0
        for node in redis_nodes:  # a cluster's masters: the hub's own connections
            with Redis.from_url(node.url) as client:
                connections += int(client.info("clients")["connected_clients"])
        return {
            "clinics": clinics,
            "redis": "cluster" if cluster else "single",
            "first_startup_s": round(first_startup, 2),
            "startup_s": round(startup, 2),
            "idle_cpu_hub_pct": round(cpu["hub"], 1),
            "idle_cpu_mongodb_pct": round(cpu["mongodb"], 1),
            "idle_cpu_redis_pct": round(sum(v for k, v in cpu.items() if k.startswith("redis")), 1),
            "hub_rss_mib": round(rss_mib(hub.pid), 1),
            "redis_connections": connections,
            **stamp(),
        }
    finally:
        hub.terminate()
        hub.wait(30)
        redis.stop()
        if nodes:
            nodes.stop()
        mongodb.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clinics", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--cluster", action="store_true", help="Redis Cluster of 3 masters")
    args = parser.parse_args()
    out = ROOT / "bench" / "results" / "tenants.json"
    for clinics in args.clinics:
        record_run(
            out,
            measure(clinics, args.cluster),
            key=lambda run: (run["clinics"], run.get("redis", "single")),
        )


if __name__ == "__main__":
    main()
