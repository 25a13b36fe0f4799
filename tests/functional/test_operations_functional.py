"""HTTP endpoints, a MongoDB outage, several hubs, and the real `python -m hub` process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import aiohttp
import jwt

from hub.core.rooms import DEFAULT_ROOMS
from hub.core.settings import Settings
from hub.server import embedded
from hub.server.appkeys import SERVICES
from tests.support.chat import code, open_pair, send
from tests.support.hubs import (
    JWT_SECRET,
    TIMEOUT,
    HubFixture,
    MakeHub,
    start_hub_process,
    tasks_started,
)

ROOT = Path(__file__).resolve().parents[2]


async def get(url: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url, headers=headers) as response:
            return response.status, await response.json()


async def ready_status(url: str, timeout: float = TIMEOUT) -> tuple[int, dict]:
    """The readiness answer, polled until it is 200 or ``timeout`` runs out."""
    status, body = await get(url)
    try:
        async with asyncio.timeout(timeout):
            while status != 200:
                await asyncio.sleep(0.1)
                status, body = await get(url)
    except TimeoutError:
        pass
    return status, body


async def test_health_ready_and_history_api(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    for n in range(3):
        await send(doctor, conversation_id, f"m{n}")
    server = hub.servers[0]
    assert await get(str(server.make_url("/health"))) == (200, {"status": "ok"})
    status, body = await get(str(server.make_url("/health/ready")))
    assert status == 200 and body["checks"] == {
        "mongodb": "ok",
        "redis": "ok",
        "appointments_stream": "ok",
        "appointments_channel": "ok",
        "socketio_fanout": "ok",
        "control_channel": "ok",
    }
    assert body["appointments_stream"] == {"lag": 0, "pending": 0}

    url = str(server.make_url(f"/api/v1/conversations/{conversation_id}/messages?limit=2"))
    status, body = await get(url, patient.token)
    assert status == 200 and [m["body"] for m in body["messages"]] == ["m1", "m2"]
    assert body["has_more"] is True
    status, body = await get(url)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    outsider = hub.token(hub.user("out"), "patient")
    status, body = await get(url, outsider)
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await get(url.replace("limit=2", "limit=lots"), patient.token)
    assert status == 400 and body["error"]["code"] == "bad_request"


async def test_mongodb_outage_answers_unavailable_and_loses_nothing(
    make_hub: MakeHub, settings: Settings, tmp_path: Path
):
    port = embedded.free_port()
    mongodb = embedded.start_mongodb(tmp_path / "mongodb", port=port)
    hub = await make_hub(replace(settings, mongodb_url=mongodb.url, mongo_timeout=1.5), start=False)
    try:
        await hub.start()
        doctor, patient, conversation_id = await open_pair(hub)
        first = await send(doctor, conversation_id, "acknowledged")
        assert first["ok"]

        await asyncio.to_thread(mongodb.stop)
        down = await send(doctor, conversation_id, "during outage")
        assert code(down) == "unavailable"
        status, body = await get(str(hub.servers[0].make_url("/health/ready")))
        assert status == 503 and body["checks"]["mongodb"].startswith("failing")
        assert body["checks"]["redis"] == "ok"

        mongodb = await asyncio.to_thread(embedded.start_mongodb, tmp_path / "mongodb", port=port)
        again = await send(doctor, conversation_id, "after outage")
        assert again["ok"] and again["message"]["seq"] == 2
        history = await patient.call("message:history", {"conversation_id": conversation_id})
        assert [m["body"] for m in history["messages"]] == ["acknowledged", "after outage"]
        pushed = [d["message"]["body"] for d in patient.recorder.of("message:new")]
        assert "during outage" not in pushed
    finally:
        await hub.close()  # before its MongoDB stops
        mongodb.stop()


async def test_two_hubs_deliver_to_each_others_clients(hub: HubFixture):
    await hub.start()
    doctor = await hub.connect(hub.user("doc"), "doctor", server=0)
    patient = await hub.connect(hub.user("pat"), "patient", server=1)
    patient_phone = await hub.connect(patient.user_id, "patient", server=0)
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    conversation_id = opened["conversation"]["id"]
    ack = await send(doctor, conversation_id, "across processes")
    for device in (patient, patient_phone):
        assert (await device.wait_for("message:new"))["message"] == ack["message"]
    await patient.call("typing", {"conversation_id": conversation_id, "typing": True})
    await doctor.wait_for("typing")
    online = await doctor.call("presence:query", {"user_ids": [patient.user_id]})
    assert online["online"] == {patient.user_id: True}


async def test_two_hubs_writing_one_conversation_keep_seq_gapless(hub: HubFixture):
    """Each hub caches the last seq it wrote; the other hub's writes make it stale."""
    await hub.start()
    doctor = await hub.connect(hub.user("doc"), "doctor", server=0)
    patient = await hub.connect(hub.user("pat"), "patient", server=1)
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    conversation_id = opened["conversation"]["id"]
    acks = []
    for round_ in range(5):
        acks += await asyncio.gather(
            *(
                send(c, conversation_id, f"{round_}-{i}")
                for i in range(4)
                for c in (doctor, patient)
            )
        )
    assert all(a["ok"] for a in acks), [a for a in acks if not a["ok"]]
    assert sorted(a["message"]["seq"] for a in acks) == list(range(1, 41))


def test_token_command_prints_a_verifiable_token(tmp_path: Path):
    env = {**os.environ, "HUB_JWT_SECRET": JWT_SECRET, "HUB_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "hub", "token", "--sub", "doc-1", "--role", "doctor", "--ttl", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    claims = jwt.decode(result.stdout.strip(), JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "doc-1" and claims["role"] == "doctor"
    assert claims["exp"] - claims["iat"] == 60


def test_serve_refuses_bad_config_naming_the_variable(tmp_path: Path):
    env = {**os.environ, "HUB_PORT": "nope", "HUB_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "hub", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2 and "HUB_PORT" in result.stderr


async def test_serve_runs_embedded_and_stops_children_on_sigterm(tmp_path: Path):
    port = embedded.free_port()
    data_dir = tmp_path / "hub-data"
    env = {**os.environ, "HUB_PORT": str(port), "HUB_DATA_DIR": str(data_dir)}
    for name in ("HUB_MONGODB_URL", "HUB_REDIS_URL", "HUB_JWT_SECRET"):
        env.pop(name, None)
    process, log = await start_hub_process(env)
    try:
        assert "development setup" in log and "SecantusDB" in log and "redis-server" in log
        assert "Celery worker" in log
        assert "(event loop: uvloop)" in log  # the default, installed with the hub
        # Listening comes before the appointment listeners' first read: readiness turns
        # 200 once they have, which under load can take a moment.
        status, body = await ready_status(f"http://127.0.0.1:{port}/health/ready")
        assert status == 200, body
        token = (data_dir / "jwt-secret").read_text().strip()
        assert len(token) >= 32
        children = _children_of(process.pid)
        assert len(children) == 3  # SecantusDB, redis-server, the SMS worker
        # ... and the worker's pool processes, which must go with it.
        children += [pid for child in children for pid in _children_of(child)]
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    for child in children:
        assert _is_gone(child)


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _is_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_a_sockets_writer_waits_on_its_queue_without_a_task_per_packet(
    hub: HubFixture,
):
    """Regression: engineio's writer waits on its queue with ``asyncio.wait_for``,
    which on Python 3.11 ran ``queue.get()`` in a task of its own: each packet took
    three trips round the event loop to reach the socket instead of one. The hub runs
    Python 3.12's ``wait_for`` (hub/compat/asyncio.py), as the tests do."""
    user_id = hub.user("doc")
    device = await hub.connect(user_id, "doctor")
    sio = hub.app()[SERVICES].sio
    with tasks_started() as started:
        for n in range(3):
            await sio.emit(
                "assistant:delta",
                {"request_id": "r1", "text": f"part {n}"},
                to=DEFAULT_ROOMS.user(user_id),
                ignore_queue=True,
            )
            await device.wait_for("assistant:delta", lambda d, n=n: d["text"] == f"part {n}")
    assert "Queue.get" not in started, started


async def test_websockets_decline_compression(hub: HubFixture):
    """Regression: aiohttp accepted permessage-deflate by default, and each connection
    kept zlib state of about 260 KiB (137 KiB of resident memory per idle connection
    in the 5,000-connection benchmark, 45 KiB without)."""
    from hub.core.protocol import SOCKETIO_PATH

    url = str(hub.servers[0].make_url(f"{SOCKETIO_PATH}/?EIO=4&transport=websocket"))
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.ws_connect(url, compress=15) as ws:
            assert ws.compress == 0
            opened = await ws.receive_str()
            assert opened.startswith("0{")  # Engine.IO OPEN: the socket works


async def test_a_send_is_answered_within_the_timeout_of_its_own_arrival_during_a_hang(
    make_hub: MakeHub, settings: Settings, tmp_path: Path
):
    """While a write hung, later sends queued behind it and were answered after up to
    twice HUB_MONGODB_TIMEOUT: a client with an ack timeout of that length gave up."""
    mongodb = embedded.start_mongodb(tmp_path / "mongodb")
    hub = await make_hub(replace(settings, mongodb_url=mongodb.url, mongo_timeout=2.0), start=False)
    try:
        await hub.start()
        doctor, _, conversation_id = await open_pair(hub)
        assert (await send(doctor, conversation_id, "before"))["ok"]
        os.kill(mongodb.process.pid, signal.SIGSTOP)  # hangs: no error, no answer
        try:
            first = asyncio.ensure_future(send(doctor, conversation_id, "stuck"))
            # Time passing, not an event: the second arrives 1 s into the first's hang.
            await asyncio.sleep(1.0)
            # A client whose ack timeout is the hub's own deadline (plus a margin for
            # the round trip) gets its answer: TimeoutError here if it queued behind.
            second = await doctor.call(
                "message:send",
                {"conversation_id": conversation_id, "client_id": "queued", "body": "behind it"},
                timeout=2.0 + 0.8,
            )
            assert code(second) == "unavailable"
            assert code(await first) == "unavailable"
        finally:
            os.kill(mongodb.process.pid, signal.SIGCONT)
        assert (await send(doctor, conversation_id, "after"))["ok"]
    finally:
        await hub.close()  # before its MongoDB stops
        mongodb.stop()
