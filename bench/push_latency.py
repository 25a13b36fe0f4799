"""From a notification stored to its push leaving a worker, for a broadcast.

One hub process (core 0 when `taskset` exists) and one Celery worker (its default
concurrency, core 1) on embedded SecantusDB and redis-server, and the test suite's
local Web Push service (tests/support/fake_push.py), which decrypts each push and
notes when it came. N patients, none connected, each with one browser subscription;
a clinic back-end changes one appointment of each at once (N events on the stream).
Each latency is a push's arrival minus its notification's ``created_at``.

    .venv/bin/python -m bench.push_latency --recipients 1000

Prints a table and records the run in bench/results/push_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import SECRET, percentile, pin, record_run, stamp, wait_healthy  # noqa: E402


async def broadcast(redis_url: str, mongodb_url: str, db_name: str, recipients: int) -> list[float]:
    from pymongo import AsyncMongoClient
    from redis.asyncio import Redis

    from channels.appointments import publish_event
    from storage import names

    redis = Redis.from_url(redis_url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    for n in range(recipients):
        await publish_event(
            redis,
            {
                "event_id": uuid.uuid4().hex,
                "appointment_id": f"bench-apt-{n}",
                "doctor_id": "bench-doctor",
                "patient_id": f"bench-pat-{n}",
                "status": "cancelled",
                "start": start.isoformat(),
                "occurred_at": datetime.now(UTC).isoformat(),
            },
        )
    await redis.aclose()
    client: AsyncMongoClient = AsyncMongoClient(mongodb_url, tz_aware=True)
    db = client[db_name]
    deadline = time.monotonic() + 600
    while await db[names.PUSH_OUTBOX].count_documents({"state": "sent"}) < recipients:
        if time.monotonic() > deadline:
            raise SystemExit("the pushes did not all go out within 10 minutes")
        await asyncio.sleep(0.5)
    created = {
        doc["_id"]: doc["created_at"]
        async for doc in db[names.NOTIFICATIONS].find({}, {"created_at": 1})
    }
    await client.close()
    return created  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=1000)
    args = parser.parse_args()

    from pymongo import MongoClient

    from hub.core.settings import vapid_key_pair
    from hub.server import embedded
    from storage import names
    from storage.push import device_id
    from tests.support.fake_push import FakePush

    data = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    mongodb = embedded.start_mongodb(data / "mongodb")
    redis = embedded.start_redis(data / "redis")
    fake = FakePush().start()
    private, _ = vapid_key_pair()
    db_name = "bench_push"
    now = datetime.now(UTC)
    with MongoClient(mongodb.url) as client:
        client[db_name][names.PUSH_DEVICES].insert_many(
            [
                {
                    "_id": device_id("webpush", subscription["endpoint"]),
                    "user_id": f"bench-pat-{n}",
                    "kind": "webpush",
                    "address": subscription["endpoint"],
                    "keys": subscription["keys"],
                    "platform": "web",
                    "locale": "en-US",
                    "created_at": now,
                    "last_seen": now,
                }
                for n in range(args.recipients)
                for subscription in [fake.subscribe().to_json()]
            ]
        )
    port = embedded.free_port()
    env = {
        **os.environ,
        "HUB_EMBEDDED": "0",
        "HUB_MONGODB_URL": mongodb.url,
        "HUB_MONGODB_DB": db_name,
        "HUB_REDIS_URL": redis.url,
        "HUB_JWT_SECRET": SECRET,
        "HUB_PORT": str(port),
        "HUB_LOG_LEVEL": "WARNING",
        "HUB_VAPID_PRIVATE_KEY": private,
        "HUB_WORKER_METRICS_PORT": "0",
    }
    hub = subprocess.Popen([*pin(0), sys.executable, "-m", "hub", "serve"], env=env, cwd=ROOT)
    # BENCH_WORKER_LOG=path keeps the worker's log (its per-task lines) for a look after.
    worker_log = open(os.environ.get("BENCH_WORKER_LOG", os.devnull), "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [*pin(1), sys.executable, "-m", "hub", "worker"],
        env={**env, "HUB_LOG_LEVEL": "INFO"},
        cwd=ROOT,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health/ready")
        began = time.perf_counter()
        created = asyncio.run(broadcast(redis.url, mongodb.url, db_name, args.recipients))
        elapsed = time.perf_counter() - began
        pushes = list(fake.web)
    finally:
        for process in (worker, hub):
            process.terminate()
            process.wait(30)
        worker_log.close()
        fake.stop()
        redis.stop()
        mongodb.stop()
        shutil.rmtree(data, ignore_errors=True)
    latencies = [
        (push["at"] - created[push["payload"]["data"]["notification_id"]]).total_seconds() * 1000
        for push in pushes
    ]
    report = {
        "scenario": "appointment broadcast to offline recipients, notification stored to push sent",
        "recipients": args.recipients,
        "pushes": len(pushes),
        "p50_ms": round(statistics.median(latencies)),
        "p99_ms": round(percentile(latencies, 0.99)),
        "max_ms": round(max(latencies)),
        "all_sent_s": round(elapsed, 1),
        "worker_concurrency": int(os.environ.get("HUB_WORKER_CONCURRENCY", "2")),
        **stamp(),
    }
    record_run(
        ROOT / "bench" / "results" / "push_latency.json", report, key=lambda r: r["recipients"]
    )


if __name__ == "__main__":
    main()
