"""`python -m hub demo` from nothing: embedded stack, seeded data, usable tokens."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from hub.server import embedded
from tests.support.hubs import TIMEOUT, Client

ROOT = Path(__file__).resolve().parents[2]


async def test_demo_starts_everything_and_prints_working_tokens(tmp_path: Path):
    port = embedded.free_port()
    env = {
        **os.environ,
        "HUB_PORT": str(port),
        "HUB_DATA_DIR": str(tmp_path / "data"),
        # Nothing listens there: the demo must say the assistant is off.
        "HUB_OLLAMA_HOST": f"http://127.0.0.1:{embedded.free_port()}",
    }
    for name in (
        "HUB_MONGODB_URL",
        "HUB_REDIS_URL",
        "HUB_JWT_SECRET",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
    ):
        env.pop(name, None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        "demo",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    clients: list[Client] = []
    try:
        assert process.stdout is not None
        lines: list[str] = []

        async def read_banner() -> None:
            assert process.stdout is not None
            while not any(line.startswith("  Redis (") for line in lines):
                line = (await process.stdout.readline()).decode()
                assert line, "demo exited early:\n" + "".join(lines)
                lines.append(line)

        await asyncio.wait_for(read_banner(), 90)
        text = "".join(lines)
        assert "SecantusDB" in text and "redis-server" in text and "Celery worker" in text
        assert re.search(r"Assistant: off: no Ollama server at http://127\.0\.0\.1:\d+", text)
        assert "SMS: to the log only" in text
        doctor_token = re.search(r"doctor:\s+(\S+)", text)
        patient_token = re.search(r"patient:\s+(\S+)", text)
        assert doctor_token and patient_token
        conversation_id = re.search(r"Conversation (\S+);", text)
        assert conversation_id

        url = f"http://127.0.0.1:{port}"
        patient = Client("pat-demo", "patient", patient_token.group(1))
        doctor = Client("dr-demo", "doctor", doctor_token.group(1))
        for client in (patient, doctor):
            clients.append(client)
            await client.sio.connect(
                url, auth={"token": client.token}, transports=["websocket"], wait_timeout=TIMEOUT
            )
        history = await patient.call(
            "message:history", {"conversation_id": conversation_id.group(1)}
        )
        assert [m["sender_id"] for m in history["messages"]] == ["dr-demo"]
        assert history["messages"][0]["sender_name"] == "Dr. Maya Chen"  # the demo's names
        notifications = await patient.call("notification:list", {})
        assert [n["appointment"]["id"] for n in notifications["notifications"]] == ["apt-demo"]
        joined = await doctor.call("consultation:join", {"appointment_id": "apt-demo"})
        assert joined["ok"], joined

        # The README's XADD example, as written, reaches the demo's patient.
        readme = (ROOT / "README.md").read_text()
        example = re.search(
            r"redis-cli -u REDIS_URL XADD hub:appointments '\*' event '(.+)'", readme
        )
        assert example, "the README's XADD example is gone"
        redis_url = re.search(r"Redis \(appointment events, e\.g\. XADD\): (\S+)", text)
        assert redis_url
        redis = Redis.from_url(redis_url.group(1), socket_timeout=TIMEOUT)
        try:
            await redis.xadd("hub:appointments", {"event": example.group(1)})
        finally:
            await redis.aclose()
        updated = await patient.wait_for("appointment:updated")
        assert updated["appointment"]["id"] == "apt-1"

        # The worker's metrics, on the port the banner names.
        worker_metrics = re.search(r"Worker metrics: (\S+)", text)
        assert worker_metrics
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:

            async def scrape() -> str:
                while True:
                    try:
                        async with http.get(worker_metrics.group(1)) as response:
                            return await response.text()
                    except aiohttp.ClientConnectionError:  # the worker is still starting
                        await asyncio.sleep(0.2)

            assert "hub_worker" in await asyncio.wait_for(scrape(), 60)
    finally:
        for client in clients:
            await client.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
