"""The cross-process fan-out through Redis: batched publishes, on real hubs and redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import socketio
from redis.asyncio import Redis

from channels.fanout import FanoutManager
from hub.core import jsonwire
from hub.core.rooms import DEFAULT_ROOMS
from hub.server import embedded
from hub.server.appkeys import SERVICES
from tests.support.chat import send
from tests.support.hubs import TIMEOUT, HubFixture, tasks_started, until

BURST = 40


def published(hub: HubFixture, server: int) -> tuple[float, float]:
    """(messages, round trips) that hub ``server`` published to Redis so far."""
    registry = hub.app(server)[SERVICES].metrics.registry
    return (
        registry.get_sample_value("hub_fanout_messages_total") or 0.0,
        registry.get_sample_value("hub_fanout_batches_total") or 0.0,
    )


async def test_a_burst_reaches_the_other_hub_whole_in_order_in_fewer_round_trips(
    hub: HubFixture,
):
    """Emits made while a batch is on its way go out together in the next one, in the
    order they were made.

    Regression: each emit was its own PUBLISH on whichever pooled connection was free,
    and a burst of 40 messages reached the patient on the other hub out of seq order."""
    await hub.start()
    doctor = await hub.connect(hub.user("doc"), "doctor", server=0)
    patient = await hub.connect(hub.user("pat"), "patient", server=1)
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    conversation_id = opened["conversation"]["id"]
    before = published(hub, 0)

    acks = await asyncio.gather(
        *(send(doctor, conversation_id, f"burst {n}") for n in range(BURST))
    )

    assert all(a["ok"] for a in acks), acks
    seqs = sorted(a["message"]["seq"] for a in acks)
    await patient.wait_for("message:new", lambda d: d["message"]["seq"] == seqs[-1])
    received = [d["message"]["seq"] for d in patient.recorder.of("message:new")]
    assert received == seqs
    messages, batches = (now - then for now, then in zip(published(hub, 0), before, strict=True))
    assert messages >= BURST
    assert batches < messages / 2, (messages, batches)


async def test_emits_return_in_bounded_time_when_redis_does_not_answer():
    """The manager's pool has no read timeout (its listener waits on reads for as long
    as the process lives), so a batch bounds its own round trip: a Redis that accepts
    connections and never answers must not hold the emits, and the handlers awaiting
    them, forever."""
    silent: list[asyncio.StreamWriter] = []  # connections accepted and never answered
    server = await asyncio.start_server(lambda _, writer: silent.append(writer), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    manager = FanoutManager(f"redis://127.0.0.1:{port}/0", 0.3, json=jsonwire)
    socketio.AsyncServer(client_manager=manager, async_mode="aiohttp")  # the manager's server
    try:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(
                *(manager.emit("probe", {"n": n}, room="nobody") for n in range(5))
            )
        assert not manager.connected  # given up on, to be replaced at the next batch

        # Closing while a batch still waits on the silent server ends its emit too.
        stuck = asyncio.create_task(manager.emit("probe", {"n": 5}, room="nobody"))
        async with asyncio.timeout(TIMEOUT):
            await manager.close()
            await stuck
    finally:
        await manager.close()
        server.close()
        for writer in silent:
            writer.close()
        await server.wait_closed()


async def clients_of(redis: Redis) -> list[str]:
    """The names of the connections Redis has open, other than ``redis``'s own."""
    listed = await redis.client_list()
    own = await redis.client_id()
    return [c["addr"] for c in listed if int(c["id"]) != own]


async def test_listener_survives_reconnects_and_leaves_no_connection_open(tmp_path: Path):
    """The listener keeps hearing the channel after the publisher replaced its client and
    after Redis restarted, and closing the manager closes every connection it made.

    Regression: python-socketio's listener used a subscription of the publishing client.
    A failed publish replaced that client and closed its pool, redis-py reconnected the
    subscription on its own, and nothing closed it afterwards: the test suite saw it
    reported as an unclosed connection, at random, after the Redis restart test."""
    port = embedded.free_port()
    server = embedded.start_redis(tmp_path / "redis", port=port)
    manager = FanoutManager(server.url, 1.0, json=jsonwire)
    socketio.AsyncServer(client_manager=manager, async_mode="aiohttp")  # the manager's server
    heard: list[object] = []

    async def listen() -> None:
        async for data in manager._listen():
            heard.append(data)

    async def hears(n: int) -> None:
        """Publish until the listener hears it: it subscribes on its own schedule."""

        async def loop() -> None:
            while {"n": n} not in heard:
                await manager._publish_batch([(manager.channel, {"n": n})])
                await asyncio.sleep(0.05)

        await asyncio.wait_for(loop(), TIMEOUT)

    manager.thread = asyncio.create_task(listen())
    probe = Redis.from_url(server.url, decode_responses=True, socket_timeout=TIMEOUT)
    try:
        await hears(1)
        manager.connected = False  # as after a failed publish: the next one reconnects
        await hears(2)
        await asyncio.to_thread(server.stop)
        server = await asyncio.to_thread(embedded.start_redis, tmp_path / "redis", port=port)
        await probe.aclose()
        probe = Redis.from_url(server.url, decode_responses=True, socket_timeout=TIMEOUT)
        await hears(3)
        assert len(await clients_of(probe)) == 2  # one publishing, one subscribed

        async with asyncio.timeout(TIMEOUT):
            await manager.close()
        assert manager.thread.done()
        left = await clients_of(probe)

        async def all_closed() -> None:
            nonlocal left
            while left:
                await asyncio.sleep(0.05)
                left = await clients_of(probe)

        try:
            await asyncio.wait_for(all_closed(), TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"connections left open: {left}") from None
    finally:
        await manager.close()
        await probe.aclose()
        server.stop()


async def test_local_emits_reach_each_device_but_the_skipped_one_without_a_task_each(
    hub: HubFixture,
):
    """Delivery to this process's sockets hands the packet over inline.

    Regression: python-socketio started a task per recipient, one more trip round the
    event loop before each socket's writer could send (1-2 ms at p99 under load)."""
    await hub.start()
    user_id = hub.user("doc")
    devices = [await hub.connect(user_id, "doctor") for _ in range(3)]
    sio = hub.app()[SERVICES].sio
    with tasks_started() as started:
        await sio.emit(
            "assistant:delta",
            {"request_id": "r1", "text": "Ask about fever."},
            to=DEFAULT_ROOMS.user(user_id),
            skip_sid=devices[0].sio.get_sid(),
            ignore_queue=True,
        )

    assert started == []
    for device in devices[1:]:
        delta = await device.wait_for("assistant:delta")
        assert delta == {"request_id": "r1", "text": "Ask about fever."}
    await devices[0].call("presence:query", {"user_ids": [user_id]})  # a round trip later
    assert devices[0].recorder.of("assistant:delta") == []


async def test_a_new_hub_is_subscribed_before_its_first_client_and_hears_at_once(
    hub: HubFixture,
):
    """python-socketio subscribed only at the first connection, and readiness counted
    the listener that did not exist yet as healthy: a device on a freshly restarted hub
    could miss, live, what another hub emitted in that moment."""
    manager = hub.app()[SERVICES].sio.manager
    assert manager.listening()
    redis = hub.app()[SERVICES].redis
    assert dict(await redis.pubsub_numsub(hub.channel))[hub.channel] == 1

    fresh = await hub.start()  # no client has connected to it
    assert dict(await redis.pubsub_numsub(hub.channel))[hub.channel] == 2
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
        async with http.get(str(fresh.make_url("/health/ready"))) as response:
            assert response.status == 200
            assert (await response.json())["checks"]["socketio_fanout"] == "ok"

    user_id = hub.user("pat")
    device = await hub.connect(user_id, "patient", server=1)
    await hub.app(0)[SERVICES].sio.emit(
        "notification:read", {"ids": ["n1"]}, to=DEFAULT_ROOMS.user(user_id)
    )
    assert await device.wait_for("notification:read") == {"ids": ["n1"]}


async def test_readiness_fails_until_the_fanout_is_subscribed(redis_server):
    """Before Redis confirms the subscription, a hub hears nothing from the others."""
    manager = FanoutManager(redis_server.url, 1.0, json=jsonwire)
    socketio.AsyncServer(client_manager=manager, async_mode="aiohttp")
    assert not manager.listening()
    manager.start()
    try:
        await until(manager.listening)
    finally:
        await manager.close()
    assert not manager.listening()
