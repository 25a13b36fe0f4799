"""The fleet: what a chat message costs all the hubs together, with 1, 2 and 4 hubs.

N hub processes on the same embedded SecantusDB and redis-server. The hubs share core
0, and the stores and the load generator (bench/load/chat.mjs: doctor-patient pairs on
the official socket.io-client, each side sending at a fixed rate with acks) share
core 1, when `taskset` exists. Each hub's CPU time comes from /proc.

- ``same``: every pair on hub 0. The other hubs have no client at all.
- ``cross``: doctors on hub 0, patients on hub 1. Any further hubs have no client.

The run reports the fleet's CPU per 1,000 delivered messages (all hubs together), each
idle hub's share of a core, and the delivery latency (send to ``message:new``).
``--tree`` runs the hubs of another checkout (a git worktree of an earlier commit),
for the figures from before a change.

    .venv/bin/python -m bench.fleet --hubs 1 2 4 --modes same cross --rate 200
    .venv/bin/python -m bench.fleet --tree ../base --label before ...
    .venv/bin/python -m bench.fleet --cluster ...   # on a Redis Cluster (redis-server 7)

Records each run in bench/results/fleet.json, one entry per (label, hubs, mode, rate).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import SECRET, bench_hubs, cpu_seconds, pin, record_run, stamp  # noqa: E402


def tokens(count: int, role: str, prefix: str) -> tuple[list[str], list[str]]:
    from hub.core.auth import issue_token
    from hub.core.settings import Settings

    settings = Settings.from_env({"HUB_JWT_SECRET": SECRET})
    ids = [f"{prefix}-{n}" for n in range(count)]
    return ids, [issue_token(settings, user_id, role, 3600) for user_id in ids]


def chat(hubs: list[tuple[str, int]], mode: str, pairs: int, rate: int, seconds: float) -> dict:
    doctor_ids, doctor_tokens = tokens(pairs, "doctor", "fleet-dr")
    patient_ids, patient_tokens = tokens(pairs, "patient", "fleet-pat")
    config = {
        "url": hubs[0][0],
        "patientUrl": hubs[1][0] if mode == "cross" else hubs[0][0],
        "mode": "hub",
        "pairs": list(zip(doctor_tokens, patient_tokens, strict=True)),
        "patientIds": patient_ids,
        "rates": [rate],
        "stepSeconds": seconds,
        "warmupSeconds": 3,
    }
    path = Path(tempfile.mkstemp(prefix="hub-fleet-", suffix=".json")[1])
    path.write_text(json.dumps(config))
    load = subprocess.Popen(
        [*pin(1), "node", str(ROOT / "bench" / "load" / "chat.mjs"), str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert load.stdout is not None
    started: list[float] = []
    began = time.monotonic()
    step: dict[str, Any] = {}
    try:
        for line in load.stdout:
            record = json.loads(line)
            if record["phase"] == "step-start":
                started = [cpu_seconds(pid) or 0.0 for _, pid in hubs]
                began = time.monotonic()
            elif record["phase"] == "step":
                used = [
                    (cpu_seconds(pid) or 0.0) - before
                    for (_, pid), before in zip(hubs, started, strict=True)
                ]
                wall = time.monotonic() - began
                step = {**record, "cpu_s": used, "wall_s": wall}
            elif record["phase"] == "done":
                break
    finally:
        load.kill()
        load.wait()
        path.unlink(missing_ok=True)
    del doctor_ids
    delivered = max(step["delivered"], 1)
    busy = 2 if mode == "cross" else 1
    idle = [cpu / step["wall_s"] for cpu in step["cpu_s"][busy:]]
    return {
        "delivered_per_s": step["delivered_per_s"],
        "errors": step["errors"],
        "fleet_cpu_s_per_1000": round(sum(step["cpu_s"]) / delivered * 1000, 3),
        "per_hub_cpu_s_per_1000": [round(c / delivered * 1000, 3) for c in step["cpu_s"]],
        "idle_hub_core_share_max": round(max(idle), 4) if idle else None,
        "e2e_p50_ms": step["e2e"]["p50"],
        "e2e_p99_ms": step["e2e"]["p99"],
        "ack_p99_ms": step["ack"]["p99"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hubs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", default=["same", "cross"])
    parser.add_argument("--rate", type=int, default=200, help="messages a second in all")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose hubs run")
    parser.add_argument("--label", default=None, help="default: routed, or cluster")
    parser.add_argument("--cluster", action="store_true", help="Redis Cluster, 3 masters")
    args = parser.parse_args()
    label = args.label or ("cluster" if args.cluster else "routed")
    for count in args.hubs:
        for mode in args.modes:
            if mode == "cross" and count < 2:
                continue
            with bench_hubs(
                count,
                {
                    "HUB_WORKER_METRICS_PORT": "0",
                    "HUB_RATE_CONN_PER_SEC": "1000",
                    "HUB_RATE_USER_PER_SEC": "1000",
                },
                tree=args.tree.resolve(),
                stores_core=1,
                cluster=args.cluster,
            ) as fleet:
                hubs = [(hub.url, hub.pid) for hub in fleet]
                result = chat(hubs, mode, args.pairs, args.rate, args.seconds)
            report = {
                "label": label,
                "hubs": count,
                "mode": mode,
                "rate": args.rate,
                **result,
                "pinned": bool(pin(0)),
                **stamp(),
            }
            record_run(
                ROOT / "bench" / "results" / "fleet.json",
                report,
                key=lambda r: (r["label"], r["hubs"], r["mode"], r["rate"]),
            )


if __name__ == "__main__":
    main()
