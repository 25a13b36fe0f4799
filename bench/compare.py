"""The hub against its peers, side by side: the reference Socket.IO server for Node and
a bare python-socketio aiohttp app, both relaying the same chat events without
authentication or storage.

    .venv/bin/python -m bench.compare                  # chat and connections, all three
    .venv/bin/python -m bench.compare --servers hub --scenarios chat

Each server runs alone, pinned to core 0 (when `taskset` exists); the load generator
(the official socket.io-client under Node, bench/load/) runs pinned to core 1, as do
the hub's MongoDB-compatible server and Redis. The same generator drives every server.

Scenarios:
- chat: N doctor-patient pairs; every client sends at a fixed rate with acks, in steps
  of rising total rate, until the ack p99 passes 50 ms (or messages fail). Per step:
  delivered messages/s, ack and end-to-end latency, errors, the server's CPU (as a
  share of its core, and in CPU seconds per 1,000 delivered messages, from the
  process's own CPU times) and resident memory. The summary compares CPU per message
  at one fixed rate every server holds (`--cpu-rate`, 200/s).
- connections: 5,000 authenticated connections opened in one burst: failures, time,
  and the resident memory each idle connection costs.

Two more servers measure where the memory floor is, in the connections scenario only
(`--servers bare-nocompress,aiohttp-ws --scenarios connections`): the bare peer with
WebSocket compression off as in the hub, and a bare aiohttp WebSocket with neither
Engine.IO nor Socket.IO (bench/peers/aiohttp_ws.py), opened as plain WebSockets.

Results go to bench/results/compare.json and a plot of delivered messages/s against
ack p99 to bench/results/compare.png. The appointment and assistant scenarios have
their own commands (bench/appointment_latency.py, bench/assistant_overhead.py); the
report quotes their last results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import SECRET, pin, wait_healthy  # noqa: E402

RESULTS = ROOT / "bench" / "results"
P99_LIMIT_MS = 50.0
# Floors for the memory figure, not peers: they do not relay chat.
CONNECTIONS_ONLY = ("bare-nocompress", "aiohttp-ws")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextmanager
def server(name: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start one server under test on core 0; yields its URL and process."""
    from hub.server import embedded

    port = embedded.free_port()
    data = Path(tempfile.mkdtemp(prefix="hub-compare-"))
    children: list[Any] = []
    env = dict(os.environ)
    if name == "hub":
        mongodb = embedded.start_mongodb(data / "mongodb")
        redis = embedded.start_redis(data / "redis")
        children += [mongodb, redis]
        if shutil.which("taskset"):  # storage shares core 1 with the load generator
            for child in children:
                subprocess.run(
                    ["taskset", "-a", "-p", "-c", "1", str(child.process.pid)],
                    check=False,
                    capture_output=True,
                )
        env.update(
            HUB_MONGODB_URL=mongodb.url,
            HUB_REDIS_URL=redis.url,
            HUB_EMBEDDED="0",
            HUB_JWT_SECRET=SECRET,
            HUB_PORT=str(port),
            HUB_WORKER_METRICS_PORT="0",
        )
        command = [sys.executable, "-m", "hub", "serve"]
        health = f"http://127.0.0.1:{port}/health/ready"
    elif name in ("bare", "bare-nocompress"):
        command = [sys.executable, str(ROOT / "bench" / "peers" / "bare_python.py"), str(port)]
        command += ["--no-compression"] if name == "bare-nocompress" else []
        health = f"http://127.0.0.1:{port}/health"
    elif name == "aiohttp-ws":
        command = [sys.executable, str(ROOT / "bench" / "peers" / "aiohttp_ws.py"), str(port)]
        health = f"http://127.0.0.1:{port}/health"
    else:
        command = ["node", str(ROOT / "bench" / "peers" / "node_server.mjs"), str(port)]
        health = f"http://127.0.0.1:{port}/health"
    log = open(data / f"{name}.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [*pin(0), *command], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        wait_healthy(health)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        for child in reversed(children):
            child.stop()
        log.close()
        kept = Path(tempfile.gettempdir()) / f"hub-compare-{name}.log"
        shutil.copy(data / f"{name}.log", kept)
        shutil.rmtree(data, ignore_errors=True)


def tokens(count: int, role: str, prefix: str) -> tuple[list[str], list[str]]:
    from hub.core.auth import issue_token
    from hub.core.settings import Settings

    settings = Settings.from_env({"HUB_JWT_SECRET": SECRET})
    ids = [f"{prefix}-{n}" for n in range(count)]
    return ids, [issue_token(settings, user_id, role, 3600) for user_id in ids]


def generator(script: str, config: dict[str, Any]) -> subprocess.Popen[str]:
    path = Path(tempfile.mkstemp(prefix="hub-load-", suffix=".json")[1])
    path.write_text(json.dumps(config))
    return subprocess.Popen(
        [*pin(1), "node", str(ROOT / "bench" / "load" / script), str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )


def chat(name: str, pairs: int, rates: list[int], step_seconds: float) -> list[dict[str, Any]]:
    doctor_ids, doctor_tokens = tokens(pairs, "doctor", "bench-dr")
    patient_ids, patient_tokens = tokens(pairs, "patient", "bench-pat")
    steps: list[dict[str, Any]] = []
    with server(name) as (url, process):
        load = generator(
            "chat.mjs",
            {
                "url": url,
                "mode": "hub" if name == "hub" else "peer",
                "pairs": list(zip(doctor_tokens, patient_tokens, strict=True)),
                "patientIds": patient_ids,
                "rates": rates,
                "stepSeconds": step_seconds,
                "warmupSeconds": 3,
            },
        )
        assert load.stdout is not None
        started = (cpu_seconds(process.pid), time.monotonic())
        try:
            for line in load.stdout:
                record = json.loads(line)
                if record["phase"] == "step-start":
                    started = (cpu_seconds(process.pid), time.monotonic())
                elif record["phase"] == "step":
                    cpu, wall = cpu_seconds(process.pid) - started[0], time.monotonic() - started[1]
                    record.update(
                        server_cpu=round(cpu / wall, 2),
                        # From the process's own CPU times: what a message costs it.
                        server_cpu_s_per_1000=round(cpu / max(record["delivered"], 1) * 1000, 3),
                        server_rss_mib=round(rss_kib(process.pid) / 1024, 1),
                    )
                    steps.append(record)
                    print(
                        f"  {name:5} {record['rate']:>6}/s  delivered "
                        f"{record['delivered_per_s']:>8}/s"
                        f"  ack p50 {record['ack']['p50']} p99 {record['ack']['p99']}"
                        f"  e2e p99 {record['e2e']['p99']}  errors {record['errors']}"
                        f"  cpu {record['server_cpu']}"
                        f" ({record['server_cpu_s_per_1000']} s per 1,000)",
                        flush=True,
                    )
                    p99 = record["ack"]["p99"]
                    if record["errors"] or p99 is None or p99 > P99_LIMIT_MS * 4:
                        break  # far past the limit: the next steps only pile up
                elif record["phase"] == "done":
                    break
        finally:
            load.kill()
            load.wait()
    return steps


def connections(name: str, count: int) -> dict[str, Any]:
    _, patient_tokens = tokens(count, "patient", "bench-idle")
    with server(name) as (url, process):
        before = rss_kib(process.pid)
        load = generator(
            "connect.mjs", {"url": url, "tokens": patient_tokens, "raw": name == "aiohttp-ws"}
        )
        assert load.stdout is not None and load.stdin is not None
        record = json.loads(load.stdout.readline())
        # Measured with every connection open and idle; settle the heap first.
        time.sleep(2)  # benchmark pacing, not a test: the server finishes its accept work
        after = rss_kib(process.pid)
        load.stdin.write("measured\n")
        load.stdin.flush()
        load.wait(60)
    opened = record["opened"]
    result = {
        "server": name,
        "attempted": count,
        "opened": opened,
        "failed": record["failed"],
        "errors": record["errors"],
        "seconds": record["seconds"],
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "kib_per_idle_connection": round((after - before) / max(opened, 1), 1),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(
        f"  {name:5} {opened}/{count} opened in {record['seconds']} s,"
        f" {result['kib_per_idle_connection']} KiB each",
        flush=True,
    )
    return result


def best(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest step within the limit: ack p99 <= 50 ms, no errors."""
    good = [
        s
        for s in steps
        if not s["errors"] and s["ack"]["p99"] is not None and s["ack"]["p99"] <= P99_LIMIT_MS
    ]
    return max(good, key=lambda s: s["delivered_per_s"]) if good else None


def plot(chat_results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for name, steps in chat_results.items():
        points = [(s["delivered_per_s"], s["ack"]["p99"]) for s in steps if s["ack"]["p99"]]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=LABELS[name])
    axes.axhline(P99_LIMIT_MS, color="grey", linestyle="--", linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel("messages delivered per second")
    axes.set_ylabel("ack p99 (ms, log scale)")
    axes.set_title("Chat throughput against ack p99, one server process on one core")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


LABELS = {
    "hub": "hub (auth + MongoDB before ack)",
    "bare": "bare python-socketio",
    "node": "Node socket.io",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", default="hub,bare,node")
    parser.add_argument("--scenarios", default="chat,connections")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--rates", default="200,500,1000,1500,2000,2500,3000,4000,5000")
    parser.add_argument(
        "--cpu-rate",
        type=int,
        default=200,
        help="the step (messages/s, one the store holds) at which CPU per message is compared",
    )
    parser.add_argument("--step-seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=5000)
    args = parser.parse_args()
    servers = args.servers.split(",")
    unknown = set(servers) - {"hub", "bare", "node", *CONNECTIONS_ONLY}
    if unknown:
        raise SystemExit(f"unknown servers: {', '.join(sorted(unknown))}")
    scenarios = args.scenarios.split(",")
    rates = [int(r) for r in args.rates.split(",")]

    out = RESULTS / "compare.json"
    report: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("chat", {})
    report.setdefault("connections", {})
    for name in servers:
        if "chat" in scenarios and name not in CONNECTIONS_ONLY:
            print(f"chat: {name}", flush=True)
            report["chat"][name] = chat(name, args.pairs, rates, args.step_seconds)
        if "connections" in scenarios:
            print(f"connections: {name}", flush=True)
            report["connections"][name] = connections(name, args.connections)
    summary = {}
    for name, steps in report["chat"].items():
        top = best(steps)
        summary[name] = {
            "delivered_per_s_at_p99_50ms": top["delivered_per_s"] if top else 0,
            "ack_p99_ms": top["ack"]["p99"] if top else None,
            "server_cpu": top["server_cpu"] if top else None,
            f"cpu_s_per_1000_at_{args.cpu_rate}": next(
                (st["server_cpu_s_per_1000"] for st in steps if st["rate"] == args.cpu_rate),
                None,
            ),
        }
    cpu_key = f"cpu_s_per_1000_at_{args.cpu_rate}"
    if "hub" in summary:
        for peer in ("bare", "node", *CONNECTIONS_ONLY):
            hub_cpu, peer_cpu = summary["hub"].get(cpu_key), summary.get(peer, {}).get(cpu_key)
            if hub_cpu and peer_cpu:
                summary["hub"][f"cpu_ratio_to_{peer}"] = round(hub_cpu / peer_cpu, 2)
            if peer in summary and summary[peer]["delivered_per_s_at_p99_50ms"]:
                summary["hub"][f"throughput_ratio_to_{peer}"] = round(
                    summary["hub"]["delivered_per_s_at_p99_50ms"]
                    / summary[peer]["delivered_per_s_at_p99_50ms"],
                    2,
                )
            hub_conn, peer_conn = report["connections"].get("hub"), report["connections"].get(peer)
            if hub_conn and peer_conn and peer_conn["kib_per_idle_connection"]:
                summary["hub"][f"memory_ratio_to_{peer}"] = round(
                    hub_conn["kib_per_idle_connection"] / peer_conn["kib_per_idle_connection"], 2
                )
    report["summary"] = summary
    for other in ("appointment_latency", "assistant_overhead"):
        path = RESULTS / f"{other}.json"
        if path.exists():
            report[other] = json.loads(path.read_text())
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
    report["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, Node {node.strip()}"
    )
    report["pinned"] = bool(shutil.which("taskset"))
    report["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if report["chat"]:
        plot(report["chat"], RESULTS / "compare.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
