"""SIGTERM on a real `python -m hub serve`: drain, tell the clients, exit in time; the
clients reconnect to the next hub and nothing they sent is lost."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest

from hub.core.settings import Settings
from hub.server import embedded
from tests.support.hubs import JWT_SECRET, TIMEOUT, Client, HubFixture, start_hub_process

ROOT = Path(__file__).resolve().parents[2]
SHUTDOWN_TIMEOUT = 6.0  # generous: CI machines are shared


async def start_hub(env: dict[str, str]) -> asyncio.subprocess.Process:
    process, _ = await start_hub_process(env, timeout=60)
    return process


async def stop_and_read(process: asyncio.subprocess.Process) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    assert process.stderr is not None
    rest = await asyncio.wait_for(process.stderr.read(), SHUTDOWN_TIMEOUT + 10)
    code = await asyncio.wait_for(process.wait(), 5)
    return code, rest.decode()


async def test_sigterm_drains_and_clients_reconnect_to_the_next_hub(settings: Settings):
    port = embedded.free_port()
    env = {
        **os.environ,
        "HUB_PORT": str(port),
        "HUB_EMBEDDED": "0",
        "HUB_MONGODB_URL": settings.mongodb_url or "",
        "HUB_REDIS_URL": settings.redis_url or "",
        "HUB_MONGODB_DB": settings.mongodb_db,
        "HUB_JWT_SECRET": JWT_SECRET,
        "HUB_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
    }
    first = await start_hub(env)
    url = f"http://127.0.0.1:{port}"
    clients: list[Client] = []
    second = None
    try:
        from hub.core.auth import issue_token

        for user_id, role in (("dr-drain", "doctor"), ("pat-drain", "patient")):
            client = Client(user_id, role, issue_token(settings, user_id, role), reconnection=True)
            await client.sio.connect(
                url, auth={"token": client.token}, transports=["websocket"], wait_timeout=TIMEOUT
            )
            clients.append(client)
        doctor, patient = clients
        opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
        conversation_id = opened["conversation"]["id"]
        first_ack = await doctor.call(
            "message:send",
            {"conversation_id": conversation_id, "client_id": "before", "body": "one"},
        )
        assert first_ack["ok"]

        # An event on its way as SIGTERM lands: it is answered either way, never dropped.
        in_flight = asyncio.ensure_future(
            doctor.call(
                "message:send",
                {"conversation_id": conversation_id, "client_id": "during", "body": "two"},
            )
        )
        code, log = await stop_and_read(first)
        ack = await asyncio.wait_for(in_flight, TIMEOUT)
        assert ack["ok"] or ack["error"]["code"] == "unavailable", ack
        assert code == 0, log
        # Within its budget: every socket acked, nothing was cut off in flight.
        assert "did not ack" not in log and "still in flight" not in log, log
        for client in clients:
            notice = await client.wait_for("server:draining")
            assert notice["reconnect"] is True
            await asyncio.wait_for(client.disconnected.wait(), TIMEOUT)
        assert "shutdown:" in log and "closing 2 sockets" in log

        # The next hub comes up where the clients look; they find it by themselves.
        second = await start_hub(env)

        async def reconnected(client: Client) -> None:
            while len(client.recorder.of("connect")) < 2:
                await client.recorder.wait_for("connect", timeout=10)
                await asyncio.sleep(0.02)

        await asyncio.wait_for(asyncio.gather(*(reconnected(c) for c in clients)), 20)
        again = await doctor.call(
            "message:send",
            {  # sent again: client_id dedupes
                "conversation_id": conversation_id,
                "client_id": "during",
                "body": "two",
            },
        )
        assert again["ok"]
        history = await patient.call("message:history", {"conversation_id": conversation_id})
        assert [m["body"] for m in history["messages"]] == ["one", "two"]
    finally:
        for client in clients:
            await client.close()
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 20)


async def test_a_client_that_never_acks_the_notice_holds_the_drain_only_its_share(
    hub: HubFixture, caplog: pytest.LogCaptureFixture
):
    """The drain waits for each socket's ack of ``server:draining`` (so that what the
    client sent before it has been read), but a client that never acks costs at most a
    quarter of the budget, and the drain still ends every transport."""
    from hub.core.protocol import SOCKETIO_PATH
    from hub.server.app import drain

    server = await hub.start()
    await hub.connect(hub.user("dr"), "doctor")  # an official client: acks
    url = str(server.make_url(f"{SOCKETIO_PATH}/?EIO=4&transport=websocket"))
    token = hub.token(hub.user("pat"), "patient")
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.ws_connect(url) as mute:
        assert (await mute.receive_str()).startswith("0{")  # Engine.IO OPEN
        await mute.send_str("40" + json.dumps({"token": token}))  # CONNECT, with auth
        assert (await mute.receive_str()).startswith("40{")
        site = next(iter(server.runner.sites))
        caplog.set_level("INFO", logger="hub.app")
        await drain(server.app, site, timeout=2.0)
        notice = await mute.receive_str()  # sent, never acked
        assert notice.startswith("42") and "server:draining" in notice
        assert (await mute.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    # Only the mute socket missed the ack, and its wait left the rest of the budget to
    # the events in flight: none was cut off.
    assert re.search(r"shutdown: 1 of \d+ sockets did not ack", caplog.text), caplog.text
    assert "still in flight" not in caplog.text


async def test_readiness_says_503_during_the_drain_and_new_sockets_are_sent_away(
    hub: HubFixture,
):
    """The docs said readiness turns 503 while draining, but the listener closed at
    once: a load balancer never saw the 503."""
    from hub.core.protocol import SOCKETIO_PATH
    from hub.server.app import drain
    from hub.server.appkeys import ROUTER
    from tests.support.hubs import until
    from tests.support.raw_socket import raw_socket

    server = await hub.start()
    user_id = hub.user("pat")
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        raw_socket(str(server.make_url("/")), hub.token(user_id, "patient")),
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        site = next(iter(server.runner.sites))
        # The raw socket never acks the notice: the drain waits its share (1 s).
        draining = asyncio.create_task(drain(server.app, site, timeout=4.0))
        await until(lambda: server.app[ROUTER].draining)
        async with http.get(str(server.make_url("/health/ready"))) as response:
            assert response.status == 503
            assert (await response.json())["checks"]["draining"].startswith("failing")
        async with http.get(
            str(server.make_url(f"/{SOCKETIO_PATH}/")), params={"EIO": "4", "transport": "polling"}
        ) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "unavailable"
        assert not draining.done()
        await asyncio.wait_for(draining, TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as fresh:  # a new connection
        with pytest.raises(aiohttp.ClientConnectionError):
            async with fresh.get(str(server.make_url("/health"))):
                pass
