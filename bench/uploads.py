"""The hub's memory and throughput while many clients upload large files at once.

One hub process (pinned to core 0 when `taskset` exists) on embedded SecantusDB and
redis-server, with Debian's clamd scanning (``--no-scan`` without it). N clients each
upload one file of the given size (a PDF: stored as it is, so the run measures the
streaming and the scan, not image decoding) at the same moment. The hub's resident
memory is sampled every 20 ms from /proc.

    .venv/bin/python -m bench.uploads --clients 20 --megabytes 20

Prints a table and records the run in bench/results/uploads.json, one entry per
(clients, size, scanned).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import SECRET, bench_hub, pin, record_run, stamp  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def run(url: str, pid: int, clients: int, size: int) -> dict[str, float]:
    import aiohttp
    import socketio

    from hub.core.auth import issue_token
    from hub.core.settings import Settings
    from tests.support.files import pdf

    settings = Settings.from_env({"HUB_JWT_SECRET": SECRET})
    doctor = socketio.AsyncClient(reconnection=False)
    token = issue_token(settings, "bench-doctor", "doctor", 3600)
    await doctor.connect(url, auth={"token": token}, transports=["websocket"])
    conversations = []
    for n in range(clients):
        ack = await doctor.call("conversation:open", {"member_ids": [f"bench-pat-{n}"]})
        conversations.append(ack["conversation"]["id"])
    body = pdf(padding=size - len(pdf()))  # a valid PDF: its page's stream padded
    piece = 256 * 1024

    async def chunks() -> object:
        for start in range(0, len(body), piece):
            yield body[start : start + piece]

    samples: list[int] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append(rss_kib(pid))
            await asyncio.sleep(0.02)

    async def upload(http: aiohttp.ClientSession, conversation_id: str) -> str:
        async with http.post(
            f"{url}/api/v1/conversations/{conversation_id}/attachments",
            data=chunks(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Disposition": "attachment; filename=bench.pdf",
            },
        ) as response:
            answer = await response.json()
            assert response.status == 201, answer
            return str(answer["attachment"]["state"])

    before = rss_kib(pid)
    sampler = asyncio.create_task(sample())
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        started = time.perf_counter()
        states = await asyncio.gather(*(upload(http, c) for c in conversations))
        elapsed = time.perf_counter() - started
    stop.set()
    await sampler
    await doctor.disconnect()
    peak = max(samples)
    return {
        "released": states.count("released"),
        "seconds": round(elapsed, 2),
        "throughput_mb_s": round(clients * size / elapsed / 1e6, 1),
        "rss_before_mib": round(before / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_growth_per_upload_mib": round((peak - before) / 1024 / clients, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--megabytes", type=int, default=20)
    parser.add_argument("--no-scan", action="store_true", help="no clamd: uploads unscanned")
    args = parser.parse_args()

    from tests.support.clamd import start_clamd

    size = args.megabytes * 1024 * 1024
    data = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    clamd = None if args.no_scan else start_clamd(data / "clamd")
    env = {"HUB_ATTACHMENT_MAX_BYTES": str(size + 1024), "HUB_CLAMD_TIMEOUT": "300"}
    if clamd is None:
        env["HUB_ATTACHMENTS_UNSCANNED"] = "1"
    else:
        env["HUB_CLAMD_URL"] = clamd.tcp_url
    try:
        with bench_hub(env) as hub:
            result = asyncio.run(run(hub.url, hub.pid, args.clients, size))
    finally:
        if clamd is not None:
            clamd.stop()
        shutil.rmtree(data, ignore_errors=True)
    report = {
        "scenario": "concurrent uploads",
        "clients": args.clients,
        "megabytes": args.megabytes,
        "scanned": clamd is not None,
        **result,
        "hub_pinned_to_one_core": bool(pin(0)),
        **stamp(),
    }
    record_run(
        ROOT / "bench" / "results" / "uploads.json",
        report,
        key=lambda r: (r["clients"], r["megabytes"], r["scanned"]),
    )


if __name__ == "__main__":
    main()
