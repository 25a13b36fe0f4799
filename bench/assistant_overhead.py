"""The hub's overhead on the assistant: from `assistant:ask` to the first `assistant:delta`,
minus the model server's own time to first token, with N consultations streaming at once.

The model's time is what the hub waited for it: from the moment the hub sends the
request to the first token it gets back (stored as `model_wait_ms` with each output).
The rest, from the doctor's `assistant:ask` to its first `assistant:delta`, is the hub:
authorization, reading the transcript, building the prompt, and the delivery through
Redis and the socket.

One hub process on one core (when `taskset` exists). Everything else shares the other core:
embedded SecantusDB and redis-server, an Ollama-compatible server
(tests/support/fake_ollama.py) in its own process, and the N doctors spread over W load
processes. The load processes run at real-time priority (SCHED_FIFO) where the system
permits it, as a latency probe does, so that what is measured is the hub and not how
long a doctor's process waited for that core; `--normal-priority-load` turns it off.
The hub, the storage and the model server keep normal priority.

    .venv/bin/python -m bench.assistant_overhead --consultations 50 --asks 15

The doctors start spread over one answer's length, and each asks again after a random
pause of up to half an answer, so most of the N answers stream at once all through the
run (100 tokens at 30 tokens/s each, by default) while the asks do not arrive in
lockstep. Meanwhile each doctor's device goes on appending transcript, a segment every
`--segment-s` seconds on average, as a live consultation does: so an ask often comes
right after a write, and the hub's copy of the consultation must follow it.

Prints a table and records the run in bench/results/assistant_overhead.json, one entry
per number of consultations, token rate, where the streams are read, segment rate and
whether the consultation cache is on (`--no-cache`).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from bench.common import SECRET, cpu_seconds, percentile, pin, record_run, stamp, wait_healthy  # noqa: E402
from tests.support.fake_ollama import FakeOllama  # noqa: E402


def serve_fake(port_queue: Any, ttft: float, tokens: int, token_ms: float) -> None:
    """The model server's process: reports its URL, then serves until terminated."""

    async def serve() -> None:
        fake = FakeOllama(
            first_delay=ttft,
            chunk_delay=token_ms / 1000,
            chunks=[f"token{i} " for i in range(tokens)],
        )
        port_queue.put(await fake.start())
        await asyncio.Event().wait()

    import uvloop  # the fake shares a core with the load: keep its own cost low

    uvloop.run(serve())


async def run(
    url: str,
    redis_url: str,
    first: int,
    consultations: int,
    asks: int,
    warmup: int,
    total: int,
    answer_s: float,
    segment_s: float,
) -> list[tuple[str, float, float, float]]:
    import socketio
    from redis.asyncio import Redis

    from channels.appointments import publish_event
    from hub.core.auth import issue_token
    from hub.core.settings import Settings

    settings = Settings.from_env({"HUB_JWT_SECRET": SECRET})
    redis = Redis.from_url(redis_url)
    samples: list[tuple[str, float, float, float]] = []  # id, asked, first delta, done

    async def doctor(n: int) -> None:
        doctor_id, appointment_id = f"bench-dr-{n}", f"bench-apt-{n}"
        t0 = datetime(2026, 11, 1, tzinfo=UTC)
        await publish_event(
            redis,
            {
                "event_id": uuid.uuid4().hex,
                "appointment_id": appointment_id,
                "doctor_id": doctor_id,
                "patient_id": f"bench-pat-{n}",
                "status": "confirmed",
                "start": (t0 + timedelta(days=40)).isoformat(),
                "occurred_at": t0.isoformat(),
            },
        )
        client = socketio.AsyncClient(reconnection=False)
        firsts: dict[str, asyncio.Future[float]] = {}

        @client.on("assistant:delta")
        async def delta(data: dict[str, Any]) -> None:
            future = firsts.get(data["request_id"])
            if future is not None and not future.done():
                future.set_result(time.perf_counter())

        done: dict[str, asyncio.Future[None]] = {}

        @client.on("assistant:done")
        async def finished(data: dict[str, Any]) -> None:
            future = done.get(data["request_id"])
            if future is not None and not future.done():
                future.set_result(None)

        await client.connect(
            url,
            auth={"token": issue_token(settings, doctor_id, "doctor")},
            transports=["websocket"],
            wait_timeout=30,
        )
        deadline = time.monotonic() + 30
        while True:  # the appointment event is applied asynchronously
            joined = await client.call("consultation:join", {"appointment_id": appointment_id})
            if joined["ok"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        consultation_id = joined["consultation"]["id"]
        for k in range(5):
            await client.call(
                "transcript:append",
                {
                    "consultation_id": consultation_id,
                    "client_id": f"s{k}",
                    "speaker": "patient",
                    "text": f"symptom number {k}, for three days",
                },
            )

        async def speak() -> None:
            """The transcript goes on streaming in while the doctor asks."""
            k = 5
            while True:
                await asyncio.sleep(random.uniform(0.5, 1.5) * segment_s)
                await client.call(
                    "transcript:append",
                    {
                        "consultation_id": consultation_id,
                        "client_id": f"s{k}",
                        "speaker": random.choice(("doctor", "patient")),
                        "text": f"sentence {k} of the consultation, about the cough",
                    },
                )
                k += 1

        speaking = asyncio.create_task(speak()) if segment_s > 0 else None
        # Spread the doctors over one answer's length, and let each think a random
        # while before asking again: answers of one length would otherwise keep all
        # N asks in lockstep, a burst no clinic makes.
        await asyncio.sleep(answer_s * n / total)
        for k in range(warmup + asks):
            asked_at = time.perf_counter()
            answer = await client.call(
                "assistant:ask", {"consultation_id": consultation_id, "question": "What next?"}
            )
            rid = answer["request_id"]
            firsts[rid] = asyncio.get_running_loop().create_future()
            done[rid] = asyncio.get_running_loop().create_future()
            first_at = await asyncio.wait_for(firsts[rid], 30)
            await asyncio.wait_for(done[rid], 30)
            if k >= warmup:
                samples.append((rid, asked_at, first_at, time.perf_counter()))
            await asyncio.sleep(random.uniform(0, answer_s / 2))
        if speaking is not None:
            speaking.cancel()
        await client.disconnect()

    await asyncio.gather(*(doctor(n) for n in range(first, first + consultations)))
    await redis.aclose()
    return samples


def cache_counts(metrics_url: str) -> dict[str, int]:
    """The hub's consultation cache counters (hit, miss, bypass) from /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = re.findall(
        r'^hub_consultation_cache_total\{result="(\w+)"\} (\S+)$', text, re.MULTILINE
    )
    return {result: int(float(value)) for result, value in found}


Sample = tuple[str, float, float, float]  # request id, asked, first delta, done


def run_load(job: tuple[bool, tuple[Any, ...]]) -> tuple[bool, list[Sample]]:
    """One load process: its samples, and whether it ran at real-time priority."""
    import uvloop

    realtime, args = job
    if realtime:
        try:
            # The doctors' own wake-ups on the shared core are not the hub's overhead:
            # at normal priority they waited behind the storage and the model server
            # (5 ms at p99 from the hub's emit to the doctor's handler, 0.7 ms so).
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except (AttributeError, PermissionError):
            realtime = False
    return realtime, uvloop.run(run(*args))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--consultations", type=int, default=50)
    parser.add_argument("--asks", type=int, default=10)
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="asks per doctor not counted (the first opens a connection)",
    )
    parser.add_argument("--ttft-ms", type=float, default=50.0, help="the model's TTFT")
    parser.add_argument("--workers", type=int, default=2, help="load processes")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per answer")
    parser.add_argument(
        "--token-ms",
        type=float,
        default=33.0,
        help="time between tokens (33 ms: a 30 tokens/s model)",
    )
    parser.add_argument(
        "--segment-s",
        type=float,
        default=2.0,
        help="mean seconds between two transcript segments of one "
        "consultation while its doctor asks (0: none)",
    )
    parser.add_argument(
        "--normal-priority-load",
        action="store_true",
        help="run the load processes at normal priority, not real-time "
        "(SCHED_FIFO, where permitted)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="read the consultation from MongoDB on every ask (HUB_ASSISTANT_CACHE=0)",
    )
    args = parser.parse_args()
    if pin(0):
        # Everything but the hub on the other core, inherited by every process started
        # from here: the storage, the model server and the load, as in bench/compare.py.
        os.sched_setaffinity(0, {1})

    from hub.server import embedded

    data = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    mongodb = embedded.start_mongodb(data / "mongodb")
    redis = embedded.start_redis(data / "redis")
    port = embedded.free_port()

    context = multiprocessing.get_context("spawn")
    urls = context.Queue()
    model = context.Process(
        target=serve_fake, daemon=True, args=(urls, args.ttft_ms / 1000, args.tokens, args.token_ms)
    )
    model.start()
    hub = None
    try:
        ollama_url = urls.get(timeout=30)
        env = {
            **os.environ,
            "HUB_MONGODB_URL": mongodb.url,
            "HUB_REDIS_URL": redis.url,
            "HUB_JWT_SECRET": SECRET,
            "HUB_PORT": str(port),
            "HUB_LOG_LEVEL": "WARNING",
            "HUB_OLLAMA_HOST": ollama_url,
            "HUB_OLLAMA_CONCURRENCY": "64",
            "HUB_RATE_CONN_PER_SEC": "1000",
            "HUB_RATE_USER_PER_SEC": "1000",
            **({"HUB_ASSISTANT_CACHE": "0"} if args.no_cache else {}),
        }
        hub = subprocess.Popen([*pin(0), sys.executable, "-m", "hub", "serve"], env=env, cwd=ROOT)
        wait_healthy(f"http://127.0.0.1:{port}/health/ready")
        per = args.consultations // args.workers
        answer_s = (args.ttft_ms + args.tokens * args.token_ms) / 1000
        jobs = [
            (
                f"http://127.0.0.1:{port}",
                redis.url,
                w * per,
                per,
                args.asks,
                args.warmup,
                args.consultations,
                answer_s,
                args.segment_s,
            )
            for w in range(args.workers)
        ]
        cpu_before, load_started = cpu_seconds(hub.pid), time.monotonic()
        with context.Pool(args.workers) as pool:
            parts = pool.map(run_load, [(not args.normal_priority_load, job) for job in jobs])
        samples = [sample for _, part in parts for sample in part]
        realtime_load = all(realtime for realtime, _ in parts)
        cpu_after, load_s = cpu_seconds(hub.pid), time.monotonic() - load_started
        cache = cache_counts(f"http://127.0.0.1:{port}/metrics")
        from pymongo import MongoClient

        with MongoClient(mongodb.url, timeoutMS=10_000) as client:
            outputs = {
                doc["_id"]: doc
                for doc in client["hub"]["assistant_outputs"].find(
                    {"model_wait_ms": {"$exists": True}},
                    {"model_wait_ms": True, "first_token_ms": True},
                )
            }
            waits = {rid: doc["model_wait_ms"] for rid, doc in outputs.items()}
    finally:
        if hub is not None:
            hub.terminate()
            hub.wait(30)
        model.terminate()
        redis.stop()
        mongodb.stop()
        shutil.rmtree(data, ignore_errors=True)
    overheads = [
        (first_at - asked_at) * 1000 - waits[request_id]
        for request_id, asked_at, first_at, _ in samples
    ]
    # The part of the overhead inside the generation task: from its start to its first
    # chunk, minus the model's wait (the prompt, and the hand-off to the model process and
    # back when there is one). The rest is the socket, the authorization read and the delivery.
    in_task = [
        outputs[request_id]["first_token_ms"] - waits[request_id] for request_id, _, _, _ in samples
    ]
    if os.environ.get("DUMP_SAMPLES"):
        import json as _j

        Path(os.environ["DUMP_SAMPLES"]).write_text(
            _j.dumps(
                [
                    {
                        "rid": r,
                        "asked": a,
                        "first": f,
                        "over": (f - a) * 1000 - waits[r],
                        "in_task": outputs[r]["first_token_ms"] - waits[r],
                        "wait": waits[r],
                    }
                    for r, a, f, _ in samples
                ]
            )
        )
    # perf_counter is the system's monotonic clock, so the load processes agree on it.
    streaming = [
        sum(1 for _, start, _, end in samples if start < asked_at < end)
        for _, asked_at, _, _ in samples
    ]
    report = {
        "scenario": "assistant:ask to first assistant:delta, minus the model's TTFT",
        "consultations": args.consultations,
        "asks_each": args.asks,
        "warmup_asks_each": args.warmup,
        "model_ttft_ms": args.ttft_ms,
        "tokens_per_answer": args.tokens,
        "ms_between_tokens": args.token_ms,
        "load_processes": args.workers,
        "requests": len(overheads),
        "streaming_at_ask_mean": round(statistics.mean(streaming), 1),
        "streaming_at_ask_p50": statistics.median(streaming),
        "p50_ms": round(statistics.median(overheads), 2),
        "p99_ms": round(percentile(overheads, 0.99), 2),
        "max_ms": round(max(overheads), 2),
        "in_generation_task_p50_ms": round(statistics.median(in_task), 2),
        "in_generation_task_p99_ms": round(percentile(in_task, 0.99), 2),
        "hub_pinned_to_one_core": bool(shutil.which("taskset")),
        # The share of its core the hub (and its model process, if any) kept busy.
        "hub_cpu_percent": (
            round(100 * (cpu_after - cpu_before) / load_s, 1)
            if cpu_before is not None and cpu_after is not None
            else None
        ),
        "load_realtime": realtime_load,
        "segment_every_s": args.segment_s,
        "consultation_cache_on": not args.no_cache,
        "consultation_cache": cache,
        **stamp(),
    }

    def key(run: dict[str, Any]) -> tuple[Any, ...]:
        return (
            run["consultations"],
            run["ms_between_tokens"],
            run.get("segment_every_s", 0),
            run.get("consultation_cache_on", False),
            run.get("load_realtime", False),
        )

    record_run(ROOT / "bench" / "results" / "assistant_overhead.json", report, key)


if __name__ == "__main__":
    main()
