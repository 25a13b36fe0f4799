"""The client SDK: its size, and how long a device that was away takes to catch up.

One hub process on embedded SecantusDB and redis-server. A patient's device (the SDK in
Node, clients/js/test/agent.mjs) syncs 20 conversations, one per doctor, and closes.
The doctors then write 50 messages each (1,000 in all). A new client on the device's
storage (a reopened app) is timed from its creation to ``online``: storage read,
connection, ``sync`` of the 1,000 messages in pages, lists. Repeated ``--rounds``
times, with 1,000 more missed messages each round.

    .venv/bin/python -m bench.sdk

Prints a table and records the run in bench/results/sdk.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import SECRET, bench_hub, pin, record_run, stamp  # noqa: E402

CONVERSATIONS = 20
PER_CONVERSATION = 50


def size() -> dict[str, int]:
    """The SDK minified and gzipped, without socket.io-client (clients/js/build.mjs)."""
    out = subprocess.run(
        ["node", "clients/js/build.mjs", "--size"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


async def run(url: str, rounds: int) -> list[float]:
    import socketio

    from hub.core.auth import issue_token
    from hub.core.settings import Settings
    from tests.support.sdk import sdk_agent

    settings = Settings.from_env({"HUB_JWT_SECRET": SECRET})
    doctors: list[tuple[socketio.AsyncClient, str]] = []
    for n in range(CONVERSATIONS):
        doctor = socketio.AsyncClient(reconnection=False)
        token = issue_token(settings, f"bench-dr-{n}", "doctor", 3600)
        await doctor.connect(url, auth={"token": token}, transports=["websocket"])
        ack = await doctor.call("conversation:open", {"member_ids": ["bench-patient"]})
        doctors.append((doctor, ack["conversation"]["id"]))
    sent = 0

    async def write(doctor: socketio.AsyncClient, conversation_id: str, count: int) -> None:
        nonlocal sent
        for _ in range(count):
            sent += 1
            ack = await doctor.call(
                "message:send",
                {"conversation_id": conversation_id, "client_id": f"b{sent}", "body": f"m{sent}"},
            )
            assert ack["ok"], ack

    token = issue_token(settings, "bench-patient", "patient", 3600)
    timings: list[float] = []
    async with sdk_agent() as agent:
        await asyncio.gather(*(write(d, c, 1) for d, c in doctors))
        await agent("client", name="phone", url=url, token=token, storage="phone")
        await agent("wait", name="phone", state="online")
        await agent("close", name="phone")
        for _ in range(rounds):
            await asyncio.gather(*(write(d, c, PER_CONVERSATION) for d, c in doctors))
            caught = await agent(
                "timed_client", name="phone", url=url, token=token, storage="phone", timeout=60
            )
            # Every missed message is held (storage kept the last 200 of each before).
            assert caught["messages"] >= CONVERSATIONS * PER_CONVERSATION, caught
            timings.append(caught["ms"])
            await agent("close", name="phone")
    for doctor, _ in doctors:
        await doctor.disconnect()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with bench_hub(
        {
            "HUB_RATE_USER_PER_SEC": "10000",
            "HUB_RATE_USER_BURST": "10000",
            "HUB_RATE_CONN_PER_SEC": "10000",
            "HUB_RATE_CONN_BURST": "10000",
        }
    ) as hub:
        timings = asyncio.run(run(hub.url, args.rounds))
    report = {
        "scenario": "sdk",
        "missed_messages": CONVERSATIONS * PER_CONVERSATION,
        "conversations": CONVERSATIONS,
        "rounds": len(timings),
        "catch_up_ms_median": round(statistics.median(timings)),
        "catch_up_ms_max": round(max(timings)),
        **{f"sdk_{k}_bytes": v for k, v in size().items()},
        "hub_pinned_to_one_core": bool(pin(0)),
        **stamp(),
    }
    record_run(ROOT / "bench" / "results" / "sdk.json", report, key=lambda r: r["scenario"])


if __name__ == "__main__":
    main()
