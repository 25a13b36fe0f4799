"""On a Redis Cluster (three masters, a replica of each; Debian's redis-server 7):
presence and workers' emits across hubs, a master killed during chat, a shard down
and back. The rest of what crosses hubs runs on both kinds of Redis
(``@pytest.mark.also_on_cluster``)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import socketio
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from channels.emitter import RoomEmitter
from channels.names import room_channel
from hub.core.rooms import Rooms
from hub.core.settings import Settings
from hub.core.tenants import DEFAULT_TENANT
from hub.server import embedded
from hub.server.appkeys import SERVICES
from tests.support.hubs import TIMEOUT, Client, HubFixture, MakeHub, until, with_env


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[embedded.RedisCluster]:
    """A cluster of the test's own: the test kills its nodes."""
    cluster = embedded.start_redis_cluster(tmp_path / "cluster")
    yield cluster
    cluster.stop()


@pytest.fixture
async def hubs(
    cluster: embedded.RedisCluster,  # first: stopped after the hubs
    make_hub: MakeHub,
    settings: Settings,
    redis_server: embedded.ChildServer,
) -> HubFixture:
    """Two hubs on the test's cluster (Celery's broker stays the single node)."""
    hub = await make_hub(
        with_env(settings, redis_url=cluster.url, celery_broker_url=redis_server.url)
    )
    await hub.start()
    return hub


def cluster_client(hub: HubFixture) -> RedisCluster:
    redis = hub.app(0)[SERVICES].redis
    assert isinstance(redis, RedisCluster)
    return redis


async def master_of(
    hub: HubFixture, cluster: embedded.RedisCluster, channel: str
) -> embedded.ChildServer:
    """The node that serves ``channel``'s slot now."""
    node = cluster_client(hub).get_node_from_key(channel)
    assert node is not None
    [server] = [n for n in cluster.nodes if n.url.endswith(f":{node.port}/0")]
    return server


async def replica_of(
    hub: HubFixture, cluster: embedded.RedisCluster, master: embedded.ChildServer
) -> embedded.ChildServer:
    nodes: dict[str, Any] = await cluster_client(hub).cluster_nodes()
    address = master.url.removeprefix("redis://").removesuffix("/0")
    master_id = nodes[address]["node_id"]
    [replica] = [a for a, node in nodes.items() if node["master_id"] == master_id]
    [server] = [n for n in cluster.nodes if n.url == f"redis://{replica}/0"]
    return server


def slots_of(cluster: embedded.RedisCluster, node: embedded.ChildServer) -> set[int]:
    """The slots ``node`` serves, by its own account."""
    cli = str(Path(embedded.cluster_redis_binary()).with_name("redis-cli"))
    address = urlsplit(node.url)
    lines = subprocess.run(
        [cli, "-h", str(address.hostname), "-p", str(address.port), "cluster", "nodes"],
        capture_output=True, text=True, timeout=10, check=True, env=embedded.real_clock_env(),
    ).stdout.splitlines()  # fmt: skip
    [mine] = [line.split() for line in lines if "myself" in line]
    slots: set[int] = set()
    for part in mine[8:]:
        first, _, last = part.partition("-")
        if first.isdigit():
            slots.update(range(int(first), int(last or first) + 1))
    return slots


async def ready(hub: HubFixture, server: int) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(str(hub.servers[server].make_url("/health/ready"))) as response,
    ):
        return response.status


async def chat_pair(hub: HubFixture) -> tuple[Client, Client, str]:
    """A doctor on hub 0 and a patient on hub 1, in one conversation."""
    doctor = await hub.connect(hub.user("dr"), "doctor", server=0)
    patient = await hub.connect(hub.user("pat"), "patient", server=1)
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    return doctor, patient, opened["conversation"]["id"]


@pytest.mark.also_on_cluster
async def test_presence_crosses_hubs(hub: HubFixture):
    await hub.start()
    doctor = await hub.connect(hub.user("dr"), "doctor", server=0)
    patient_id = hub.user("pat")
    opened = await doctor.call("conversation:open", {"member_ids": [patient_id]})
    assert opened["ok"], opened
    query = {"user_ids": [patient_id]}
    assert (await doctor.call("presence:query", query))["online"] == {patient_id: False}

    patient = await hub.connect(patient_id, "patient", server=1)
    await doctor.wait_for("presence", lambda d: d["user_id"] == patient_id and d["online"])
    assert (await doctor.call("presence:query", query))["online"] == {patient_id: True}
    await patient.sio.disconnect()
    await doctor.wait_for("presence", lambda d: d["user_id"] == patient_id and not d["online"])


@pytest.mark.also_on_cluster
async def test_a_workers_emit_reaches_the_room_on_its_hub_only(hub: HubFixture):
    """Celery workers published every emit to the channel every hub reads; now to the
    room's (on a cluster, with SPUBLISH: a plain PUBLISH never reaches a shard channel)."""
    await hub.start()
    patient = await hub.connect(hub.user("pat"), "patient", server=1)
    metrics = [hub.app(n)[SERVICES].metrics.registry for n in (0, 1)]
    before = [m.get_sample_value("hub_fanout_received_total") or 0.0 for m in metrics]
    emitter = RoomEmitter(hub.settings.redis_url or "", 5.0, channel=hub.channel)
    room = hub.app(1)[SERVICES].rooms.user(patient.user_id)
    try:
        await asyncio.to_thread(emitter.emit, "notification:read", {"ids": ["n1"]}, room=room)
    finally:
        emitter.close()
    assert await patient.wait_for("notification:read") == {"ids": ["n1"]}
    after = [m.get_sample_value("hub_fanout_received_total") or 0.0 for m in metrics]
    assert after[0] - before[0] == 0 and after[1] - before[1] == 1


async def test_a_master_killed_during_chat_loses_and_duplicates_nothing(
    cluster: embedded.RedisCluster,
    make_hub: MakeHub,
    settings: Settings,
    redis_server: embedded.ChildServer,
):
    """The master that carries the patient's room dies mid-chat: its replica takes
    over, the doctor's resends (same client ids) store each message once, live
    delivery to the patient's hub comes back without a restart, and ``sync`` has every
    acked message, once, in order. The hubs' URL names that master only: what they
    learnt of the cluster is all they have to find the replica (the fan-out once made
    a new client on a failure, which knew the URL's node only, and never published
    again)."""
    hub = await make_hub(start=False)
    channel = room_channel(hub.channel, Rooms(DEFAULT_TENANT).user(hub.user("pat")))
    slot = key_slot(channel.encode())
    master = next(n for n in cluster.masters if slot in slots_of(cluster, n))
    address = master.url.removeprefix("redis://")
    hub.settings = with_env(
        settings, redis_url=f"redis+cluster://{address}", celery_broker_url=redis_server.url
    )
    await hub.start()
    await hub.start()
    doctor, patient, conversation_id = await chat_pair(hub)
    acked: dict[str, int] = {}  # client id -> seq
    killed_at: list[int] = []  # how many were acked when the master died
    stop = asyncio.Event()

    async def send_until_acked(client_id: str) -> None:
        payload = {"conversation_id": conversation_id, "client_id": client_id, "body": client_id}
        while True:
            try:
                answer = await doctor.call("message:send", payload, timeout=10)
            except socketio.exceptions.TimeoutError:
                continue  # the same client id again: stored once whatever happened
            if answer["ok"]:
                acked[client_id] = answer["message"]["seq"]
                return

    async def chatter() -> None:
        while not stop.is_set():
            await send_until_acked(uuid.uuid4().hex)

    writer = asyncio.create_task(chatter())
    try:
        await until(lambda: len(acked) >= 20)
        master.kill()
        killed_at.append(len(acked))
        await until(lambda: len(acked) >= killed_at[0] + 40, timeout=60)
        # Live delivery to the other hub comes back: a message acked well after the
        # kill arrives live (those published while the shard was away do not).
        await patient.wait_for(
            "message:new", lambda d: d["message"]["seq"] > killed_at[0] + 40, timeout=60
        )
    finally:
        stop.set()
        await asyncio.wait_for(writer, TIMEOUT)

    stored: list[tuple[int, str]] = []
    while True:  # sync pages: 500 messages at most each
        cursor = stored[-1][0] if stored else 0
        synced = await patient.call("sync", {"cursors": {conversation_id: cursor}})
        stored += [(m["seq"], m["client_id"]) for m in synced["messages"]]
        if not synced.get("has_more"):
            break
    assert [seq for seq, _ in stored] == list(range(1, len(acked) + 1))
    assert sorted(stored) == sorted((seq, client_id) for client_id, seq in acked.items())
    live = [d["message"]["seq"] for d in patient.recorder.of("message:new")]
    assert len(live) == len(set(live))  # none twice


async def test_readiness_says_a_shard_is_down_and_fanout_comes_back(
    hubs: HubFixture, cluster: embedded.RedisCluster
):
    """A master and its replica both down: no failover can happen, so the hubs say
    they are not ready; once the master is back they are, and chat crosses hubs again."""
    hub = hubs
    doctor, patient, conversation_id = await chat_pair(hub)
    master = await master_of(hub, cluster, hub.channel)  # the channel every hub reads
    replica = await replica_of(hub, cluster, master)
    replica.kill()
    master.kill()

    async def status_is(expected: int) -> None:
        while await ready(hub, 1) != expected:
            await asyncio.sleep(0.1)  # polling the endpoint under test

    await asyncio.wait_for(status_is(503), TIMEOUT)
    started = time.monotonic()
    master.start_again()
    await asyncio.wait_for(asyncio.to_thread(embedded.wait_cluster_ok, cluster), 60)
    await asyncio.wait_for(status_is(200), 60)
    back_after = time.monotonic() - started
    payload = {"conversation_id": conversation_id, "client_id": "after", "body": "back"}
    assert (await doctor.call("message:send", payload))["ok"]
    await patient.wait_for("message:new", lambda d: d["message"]["client_id"] == "after")
    assert back_after < 60


def move_slot(cluster: embedded.RedisCluster, slot: int, source: str, target: str) -> None:
    """Move ``slot`` (and its keys) from master ``source`` to master ``target`` (both
    host:port), as ``redis-cli --cluster reshard`` does."""
    cli = str(Path(embedded.cluster_redis_binary()).with_name("redis-cli"))

    def run(address: str, *command: str) -> str:
        host, port = address.split(":")
        done = subprocess.run(
            [cli, "-h", host, "-p", port, *command],
            capture_output=True, text=True, timeout=10, env=embedded.real_clock_env(),
        )  # fmt: skip
        assert done.returncode == 0 and not done.stdout.startswith("ERR"), done.stdout
        return done.stdout.strip()

    source_id, target_id = run(source, "cluster", "myid"), run(target, "cluster", "myid")
    run(target, "cluster", "setslot", str(slot), "importing", source_id)
    run(source, "cluster", "setslot", str(slot), "migrating", target_id)
    host, port = target.split(":")
    while keys := run(source, "cluster", "getkeysinslot", str(slot), "100").split():
        run(source, "migrate", host, port, "", "0", "5000", "keys", *keys)
    for node in cluster.masters:
        if node.process.poll() is None:
            run(node.url.removeprefix("redis://").removesuffix("/0"), "cluster", "setslot",
                str(slot), "node", target_id)  # fmt: skip


async def test_a_moved_slot_is_followed_by_the_fanout_and_the_commands(
    hubs: HubFixture, cluster: embedded.RedisCluster
):
    """The slot of the patient's room moves to another master mid-chat (resharding).
    Redis then unsubscribes the room's channel on the old master: the patient's hub
    subscribes again on the new one, and live delivery goes on; nothing acked is lost."""
    hub = hubs
    doctor, patient, conversation_id = await chat_pair(hub)
    channel = room_channel(hub.channel, hub.app(1)[SERVICES].rooms.user(patient.user_id))
    source = await master_of(hub, cluster, channel)
    target = next(n for n in cluster.masters if n is not source)
    source_address, target_address = (
        n.url.removeprefix("redis://").removesuffix("/0") for n in (source, target)
    )
    sent: list[int] = []

    async def send(body: str) -> None:
        payload = {"conversation_id": conversation_id, "client_id": body, "body": body}
        answer = await doctor.call("message:send", payload)
        assert answer["ok"], answer
        sent.append(answer["message"]["seq"])

    for n in range(10):
        await send(f"before-{n}")
    await asyncio.to_thread(
        move_slot, cluster, key_slot(channel.encode()), source_address, target_address
    )
    # The hub hears of the move from Redis (the channel unsubscribed), not from the test;
    # what is published until it subscribed on the new master is not delivered live.
    for _ in range(100):
        await send(f"after-{len(sent)}")
        try:
            await patient.wait_for(
                "message:new", lambda d, seq=sent[-1]: d["message"]["seq"] == seq, 0.2
            )
            break
        except TimeoutError:
            continue  # published before the hub subscribed on the new master: sync has it
    else:
        raise AssertionError("live delivery did not come back after the slot moved")
    # The patient's hub holds the room's subscription on the new master now.
    new_owner = cluster_client(hub).get_node(*target_address.split(":"))
    [(_, count)] = await cluster_client(hub).pubsub_shardnumsub(channel, target_nodes=new_owner)
    assert count == 1
    synced = await patient.call("sync", {"cursors": {conversation_id: 0}})
    assert [m["seq"] for m in synced["messages"]] == sent == list(range(1, len(sent) + 1))
