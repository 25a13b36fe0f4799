"""Latency from XADD on hub:appointments to appointment:updated on the patient's device.

One hub process (pinned to one core when `taskset` exists) on embedded SecantusDB and
redis-server; N connected patients spread over W load processes. Each load process adds
events for its own patients to the stream and times their arrival, so the clock that
starts and stops a measurement is the same.

    .venv/bin/python -m bench.appointment_latency --clients 1000 --events 2000 --rate 200

Prints a table and records the run in bench/results/appointment_latency.json, one
entry per rate (a new run at the same rate replaces the old one).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import SECRET, bench_hub, percentile, pin, record_run, stamp  # noqa: E402


async def load(
    url: str, redis_url: str, first: int, count: int, events: int, rate: float, start_at: float
) -> dict:
    import socketio
    from redis.asyncio import Redis

    sys.path.insert(0, str(ROOT))
    from channels.appointments import publish_event
    from hub.core.auth import issue_token
    from hub.core.settings import Settings

    settings = Settings.from_env({"HUB_JWT_SECRET": SECRET})
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    clients = []

    async def connect(n: int) -> None:
        client = socketio.AsyncClient(reconnection=False)
        user_id = f"bench-pat-{n}"

        @client.on("appointment:updated")
        async def updated(data: dict) -> None:
            started = sent.pop(data["appointment"]["id"], None)
            if started is not None:
                latencies.append((time.perf_counter() - started) * 1000)
                if len(latencies) == events:
                    done.set()

        await client.connect(
            url,
            auth={"token": issue_token(settings, user_id, "patient")},
            transports=["websocket"],
            wait_timeout=30,
        )
        clients.append(client)

    for batch in range(first, first + count, 50):
        await asyncio.gather(*(connect(n) for n in range(batch, min(batch + 50, first + count))))
    redis = Redis.from_url(redis_url)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    begin = time.perf_counter()
    for i in range(events):
        n = first + i % count
        appointment_id = f"apt-{n}-{i}"
        event = {
            "event_id": uuid.uuid4().hex,
            "appointment_id": appointment_id,
            "doctor_id": "bench-dr",
            "patient_id": f"bench-pat-{n}",
            "status": "scheduled",
            "start": (t0 + timedelta(days=3)).isoformat(),
            "occurred_at": t0.isoformat(),
        }
        sent[appointment_id] = time.perf_counter()
        await publish_event(redis, event)
        delay = begin + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    try:
        await asyncio.wait_for(done.wait(), 30)
    except TimeoutError:
        pass
    lost = len(sent)
    for client in clients:
        await client.disconnect()
    await redis.aclose()
    return {"latencies": latencies, "lost": lost}


def run_load(args: tuple) -> dict:
    return asyncio.run(load(*args))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="events per second in all")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    with bench_hub({"HUB_RATE_CONN_PER_SEC": "1000", "HUB_RATE_USER_PER_SEC": "1000"}) as hub:
        per = args.clients // args.workers
        start_at = time.time() + 5 + args.clients / 200
        # Workers start 1/rate apart, so the stream sees events evenly spaced at the
        # chosen rate rather than in bursts of one per worker.
        jobs = [
            (
                hub.url,
                hub.redis_url,
                w * per,
                per,
                args.events // args.workers,
                args.rate / args.workers,
                start_at + w / args.rate,
            )
            for w in range(args.workers)
        ]
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            results = pool.map(run_load, jobs)
    latencies = [v for r in results for v in r["latencies"]]
    report = {
        "scenario": "XADD to appointment:updated",
        "clients": args.clients,
        "events": args.events,
        "rate_per_s": args.rate,
        "received": len(latencies),
        "lost": sum(r["lost"] for r in results),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "hub_pinned_to_one_core": bool(pin(0)),
        **stamp(),
    }
    record_run(
        ROOT / "bench" / "results" / "appointment_latency.json",
        report,
        key=lambda run: run["rate_per_s"],
    )


if __name__ == "__main__":
    main()
