"""Routed fan-out: a hub hears only what is addressed to the rooms its sockets are in,
every device still gets each event once, and a socket that joins a room while
another hub publishes to it misses nothing (the live events, then ``sync`` or the
history, cover the window)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio import RedisCluster

from channels.fanout import FanoutManager
from hub.server.appkeys import SERVICES
from tests.support.chat import send
from tests.support.consultations import appointment, say
from tests.support.hubs import HubFixture, MakeHub, until


def received(hub: HubFixture, server: int) -> float:
    """What hub ``server`` read off Redis so far (``hub_fanout_received_total``)."""
    registry = hub.app(server)[SERVICES].metrics.registry
    return registry.get_sample_value("hub_fanout_received_total") or 0.0


@pytest.mark.also_on_cluster
async def test_hubs_without_the_people_hear_none_of_their_chat(hub: HubFixture):
    """Every emit of every clinic went to one channel that every hub read: each hub
    parsed every message of the fleet, whether or not it had a socket to give it to."""
    await hub.start()
    await hub.start()
    doctor = await hub.connect(hub.user("dr"), "doctor", server=0)
    patient = await hub.connect(hub.user("pat"), "patient", server=0)
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    conversation_id = opened["conversation"]["id"]
    before = [received(hub, n) for n in range(3)]
    for n in range(20):
        assert (await send(doctor, conversation_id, f"only here {n}"))["ok"]
        await patient.call("typing", {"conversation_id": conversation_id, "typing": True})
    await until(lambda: len(patient.recorder.of("message:new")) == 20)
    assert [received(hub, n) - before[n] for n in (1, 2)] == [0, 0]

    # A device of the patient on hub 2: from then on that hub hears the patient's
    # room, and only that hub.
    phone = await hub.connect(patient.user_id, "patient", server=2)
    assert (await send(doctor, conversation_id, "now on two hubs"))["ok"]
    await phone.wait_for("message:new", lambda d: d["message"]["body"] == "now on two hubs")
    assert received(hub, 1) - before[1] == 0 and received(hub, 2) - before[2] >= 1


@pytest.mark.also_on_cluster
async def test_a_person_on_two_hubs_gets_each_event_once_per_device(hub: HubFixture):
    await hub.start()
    doctor = await hub.connect(hub.user("dr"), "doctor", server=0)
    patient_id = hub.user("pat")
    devices = [
        await hub.connect(patient_id, "patient", server=0),
        await hub.connect(patient_id, "patient", server=1),
        await hub.connect(patient_id, "patient", server=1),
    ]
    opened = await doctor.call("conversation:open", {"member_ids": [patient_id]})
    conversation_id = opened["conversation"]["id"]
    bodies = [f"m{n}" for n in range(10)]
    for body in bodies:
        assert (await send(doctor, conversation_id, body))["ok"]
    # One emit to two rooms (the doctor's and the patient's) reaches each device once.
    services = hub.app(0)[SERVICES]
    await services.sio.emit(
        "notification:read",
        {"ids": ["both-rooms"]},
        to=[services.rooms.user(doctor.user_id), services.rooms.user(patient_id)],
    )
    for device in devices:
        await device.wait_for("notification:read")
        await until(lambda d=device: len(d.recorder.of("message:new")) == len(bodies))
    marker = await doctor.call("typing", {"conversation_id": conversation_id, "typing": True})
    assert marker["ok"]
    for device in devices:  # the typing event came after all the rest: nothing more is due
        await device.wait_for("typing")
        assert [d["message"]["body"] for d in device.recorder.of("message:new")] == bodies
        assert device.recorder.of("notification:read") == [{"ids": ["both-rooms"]}]


class SlowSubscriptions:
    """A hub's subscription, with each SUBSCRIBE sent late: the window between a
    socket joining a room and Redis delivering the room's channel, made wide."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub

    async def subscribe(self, *channels: str) -> None:
        await asyncio.sleep(0.3)  # the delay under test, not a wait for an event
        await self.pubsub.subscribe(*channels)

    async def unsubscribe(self, *channels: str) -> None:
        await self.pubsub.unsubscribe(*channels)

    async def aclose(self) -> None:
        await self.pubsub.aclose()


@pytest.fixture
async def slow_hubs(make_hub: MakeHub, monkeypatch: pytest.MonkeyPatch) -> HubFixture:
    follow = FanoutManager._follow_rooms

    async def slowly(self: FanoutManager, pubsub: Any) -> None:
        await follow(self, SlowSubscriptions(pubsub))

    monkeypatch.setattr(FanoutManager, "_follow_rooms", slowly)
    hub = await make_hub()
    await hub.start()
    return hub


@pytest.mark.also_on_cluster
async def test_a_device_connecting_while_another_hub_publishes_misses_nothing(
    slow_hubs: HubFixture,
):
    """The window between a socket joining its room on one hub and that hub's
    subscription to the room: the connection is accepted once the subscription is
    confirmed, so what is published after it arrives live, and ``sync`` has the rest.
    Accepted at once, the device lost what was published in the window."""
    hub = slow_hubs
    doctor = await hub.connect(hub.user("dr"), "doctor", server=0)
    patient_id = hub.user("pat")
    opened = await doctor.call("conversation:open", {"member_ids": [patient_id]})
    conversation_id = opened["conversation"]["id"]
    stop = asyncio.Event()
    sent: list[int] = []

    async def chatter() -> None:
        while not stop.is_set():
            ack = await send(doctor, conversation_id, uuid.uuid4().hex)
            sent.append(ack["message"]["seq"])

    writer = asyncio.create_task(chatter())
    try:
        await until(lambda: len(sent) >= 20)
        device = await hub.connect(patient_id, "patient", server=1)
        synced = await device.call("sync", {"cursors": {conversation_id: 0}})
        await until(lambda: len(sent) >= len(synced["messages"]) + 20)
    finally:
        stop.set()
        await writer
    last = sent[-1]
    await device.wait_for("message:new", lambda d: d["message"]["seq"] == last)
    live = [d["message"]["seq"] for d in device.recorder.of("message:new")]
    have = sorted({m["seq"] for m in synced["messages"]} | set(live))
    assert have == list(range(1, last + 1))
    assert live == sorted(live) and len(live) == len(set(live))


@pytest.mark.also_on_cluster
async def test_a_consultation_joined_on_another_hub_midway_gets_the_rest(
    slow_hubs: HubFixture,
):
    hub = slow_hubs
    doctor = await hub.connect(hub.user("dr"), "doctor", server=0)
    patient = await hub.connect(hub.user("pat"), "patient", server=1)
    appointment_id = await appointment(hub, doctor.user_id, patient.user_id)
    joined = await doctor.call("consultation:join", {"appointment_id": appointment_id})
    consultation_id = joined["consultation"]["id"]
    stop = asyncio.Event()
    said: list[dict[str, Any]] = []

    async def dictate() -> None:
        while not stop.is_set():
            said.append(await say(doctor, consultation_id, f"segment {len(said)}", "doctor"))

    talking = asyncio.create_task(dictate())
    try:
        await until(lambda: len(said) >= 10)
        assert (await patient.call("consultation:join", {"appointment_id": appointment_id}))["ok"]
        history = await patient.call("transcript:history", {"consultation_id": consultation_id})
        await until(lambda: len(said) >= len(history["segments"]) + 10)
    finally:
        stop.set()
        await talking
    last = said[-1]["seq"]
    await patient.wait_for("transcript:new", lambda d: d["segment"]["seq"] == last)
    live = [d["segment"]["seq"] for d in patient.recorder.of("transcript:new")]
    assert sorted({s["seq"] for s in history["segments"]} | set(live)) == list(range(1, last + 1))
    assert len(live) == len(set(live))


@pytest.mark.also_on_cluster
async def test_leaving_a_room_stops_hearing_it(hub: HubFixture):
    """The last socket of a room gone, its hub unsubscribes from the room's channel."""
    await hub.start()
    services = hub.app(1)[SERVICES]
    manager = services.sio.manager
    patient_id = hub.user("pat")
    device = await hub.connect(patient_id, "patient", server=1)
    room_channel = f"{hub.channel}#{services.rooms.user(patient_id)}"
    redis = hub.app(0)[SERVICES].redis

    async def subscribers() -> int:
        if isinstance(redis, RedisCluster):  # a shard channel, counted by its shard
            owner = redis.get_node_from_key(room_channel)
            [(_, count)] = await redis.pubsub_shardnumsub(room_channel, target_nodes=owner)
        else:
            [(_, count)] = await redis.pubsub_numsub(room_channel)
        return int(count)

    assert await subscribers() == 1
    await device.sio.disconnect()
    await until(lambda: services.rooms.user(patient_id) not in manager._rooms)

    async def gone() -> None:
        while await subscribers():
            await asyncio.sleep(0.02)  # polling Redis's count, not waiting for an event

    await asyncio.wait_for(gone(), 5)
