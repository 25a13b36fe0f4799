"""Appointment events: three ingestion paths, notifications, faults, several hubs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from channels import client as redis_client
from channels.appointments import ChannelListener, StreamConsumer, publish_event
from channels.names import (
    APPOINTMENTS_GROUP,
    appointments_channel,
    appointments_dead,
    appointments_stream,
)
from hub.core.protocol import iso
from hub.core.settings import Settings
from hub.core.tenants import DEFAULT_TENANT
from hub.server import embedded
from hub.server.appkeys import SERVICES
from tests.support.appointments import T0, event
from tests.support.chat import code
from tests.support.hubs import (
    JWT_SECRET,
    TIMEOUT,
    Client,
    HubFixture,
    MakeHub,
    cancel_stops,
    wait_ready,
)

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks

STREAM, CHANNEL, DEAD = (
    appointments_stream(DEFAULT_TENANT),
    appointments_channel(DEFAULT_TENANT),
    appointments_dead(DEFAULT_TENANT),
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis_private(tmp_path: Path) -> Iterator[embedded.ChildServer]:
    """A redis-server of this test alone: the appointment stream is global to a Redis."""
    server = embedded.start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
async def hubs(
    make_hub: MakeHub, settings: Settings, redis_private: embedded.ChildServer
) -> HubFixture:
    return await make_hub(replace(settings, redis_url=redis_private.url, stream_claim_after=0.5))


@pytest.fixture
async def redis(redis_private: embedded.ChildServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_private.url, decode_responses=True, socket_timeout=TIMEOUT)
    yield client
    await client.aclose()


async def service_key(hub: HubFixture, name: str = "backend") -> str:
    return await hub.app()[SERVICES].service_keys.create(name)


async def post_event(
    hub: HubFixture, body: Any, key: str | None, server: int = 0
) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    url = str(hub.servers[server].make_url("/api/v1/events/appointments"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        async with session.post(url, data=data, headers=headers) as response:
            return response.status, await response.json()


async def wait_no_pending(redis: Redis) -> None:
    """The XACK follows the emit, so a client may see the event just before it."""

    async def poll() -> None:
        while (await redis.xpending(STREAM, APPOINTMENTS_GROUP))["pending"]:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), TIMEOUT)


async def people(hub: HubFixture) -> tuple[Client, Client, Client]:
    doctor = await hub.connect(hub.user("doc"), "doctor")
    patient = await hub.connect(hub.user("pat"), "patient")
    patient_phone = await hub.connect(patient.user_id, "patient")
    return doctor, patient, patient_phone


async def test_stream_event_reaches_every_device_and_is_stored(hubs: HubFixture, redis: Redis):
    doctor, patient, phone = await people(hubs)
    sent = event("apt-1", "scheduled", doctor_id=doctor.user_id, patient_id=patient.user_id)
    await publish_event(redis, sent)
    for device in (doctor, patient, phone):
        updated = await device.wait_for("appointment:updated")
        assert updated["appointment"]["status"] == "scheduled"
        assert updated["appointment"]["id"] == "apt-1"
        assert updated["appointment"]["start"] == iso(T0 + timedelta(days=3))
        new = await device.wait_for("notification:new")
        assert new["notification"]["type"] == "appointment.scheduled"
        assert new["notification"]["read_at"] is None
    listed = await patient.call("notification:list", {})
    assert listed["unread_count"] == 1 and listed["has_more"] is False
    assert listed["notifications"][0]["appointment"]["doctor_id"] == doctor.user_id
    conversations = (await doctor.call("conversation:list", {}))["conversations"]
    assert [(c["appointment_id"], sorted(c["member_ids"])) for c in conversations] == [
        ("apt-1", sorted([doctor.user_id, patient.user_id]))
    ]
    await wait_no_pending(redis)


async def test_lifecycle_and_reschedule_and_stale_events(hubs: HubFixture, redis: Redis):
    doctor, patient, _ = await people(hubs)
    ids = {"doctor_id": doctor.user_id, "patient_id": patient.user_id}
    await publish_event(redis, event("apt-2", "scheduled", **ids, minutes=0))
    await publish_event(redis, event("apt-2", "confirmed", **ids, minutes=10))
    await publish_event(redis, event("apt-2", "scheduled", **ids, minutes=5))  # late, stale
    later = T0 + timedelta(days=4)
    await publish_event(redis, event("apt-2", "confirmed", **ids, minutes=20, start=later))
    await patient.wait_for(
        "notification:new", lambda d: d["notification"]["type"] == "appointment.rescheduled"
    )
    types = [d["notification"]["type"] for d in patient.recorder.of("notification:new")]
    assert types == ["appointment.scheduled", "appointment.confirmed", "appointment.rescheduled"]
    last = patient.recorder.of("appointment:updated")[-1]["appointment"]
    assert last["status"] == "confirmed" and last["start"] == iso(later)
    assert last["previous_start"] == iso(T0 + timedelta(days=3))
    stored = await hubs.app()[SERVICES].appointments.get("apt-2")
    assert stored is not None and stored["status"] == "confirmed"


@pytest.mark.also_on_cluster
async def test_one_event_on_three_paths_and_two_hubs_takes_effect_once(
    hubs: HubFixture, redis: Redis
):
    await hubs.start()
    doctor = await hubs.connect(hubs.user("doc"), "doctor", server=0)
    patient = await hubs.connect(hubs.user("pat"), "patient", server=1)
    key = await service_key(hubs)
    sent = event("apt-3", "scheduled", doctor_id=doctor.user_id, patient_id=patient.user_id)
    results = await asyncio.gather(
        publish_event(redis, sent),
        redis.publish(CHANNEL, orjson.dumps(sent)),
        post_event(hubs, sent, key, server=0),
        post_event(hubs, sent, key, server=1),
    )
    assert {r[1]["outcome"] for r in results[2:]} <= {"applied", "duplicate"}
    # A later event is the barrier: once it arrived, every copy of the first was handled.
    marker = event(
        "apt-3", "confirmed", doctor_id=doctor.user_id, patient_id=patient.user_id, minutes=1
    )
    await publish_event(redis, marker)
    for client in (doctor, patient):
        await client.wait_for(
            "notification:new", lambda d: d["notification"]["type"] == "appointment.confirmed"
        )
        types = [d["notification"]["type"] for d in client.recorder.of("notification:new")]
        assert types == ["appointment.scheduled", "appointment.confirmed"]
        assert len(client.recorder.of("appointment:updated")) == 2


async def test_invalid_events_go_to_dead_letters_and_consumer_goes_on(
    hubs: HubFixture, redis: Redis
):
    doctor, patient, _ = await people(hubs)
    ids = {"doctor_id": doctor.user_id, "patient_id": patient.user_id}
    raws = [
        b"{not json",
        orjson.dumps({"event_id": "e-x", "status": "scheduled"}),
        orjson.dumps(event("apt-4", "rescheduled", **ids)),
        orjson.dumps({**event("apt-4", "scheduled", **ids), "start": "2026-12-01T09:00:00"}),
    ]
    for raw in raws:
        await redis.xadd(STREAM, {"event": raw})
    await redis.xadd(STREAM, {"wrong_field": "x"})
    await publish_event(redis, event("apt-4", "completed", **ids, minutes=1))
    await publish_event(redis, event("apt-4", "confirmed", **ids, minutes=2))  # after completed
    await redis.publish(CHANNEL, b"[]")
    good = event("apt-5", "scheduled", **ids, minutes=3)
    await publish_event(redis, good)
    await patient.wait_for("appointment:updated", lambda d: d["appointment"]["id"] == "apt-5")

    async def dead_count() -> list[Any]:
        while len(entries := await redis.xrange(DEAD)) < 7:
            await asyncio.sleep(0.02)
        return entries

    dead = await asyncio.wait_for(dead_count(), TIMEOUT)
    reasons = [fields["reason"] for _, fields in dead]
    assert any("JSON" in r for r in reasons)
    assert any("appointment_id" in r for r in reasons)
    assert any("status" in r for r in reasons)
    assert any("timezone" in r for r in reasons)
    assert any("no 'event' field" in r for r in reasons)
    assert any("impossible transition completed -> confirmed" in r for r in reasons)
    assert any(fields["source"] == "pubsub" for _, fields in dead)
    await wait_no_pending(redis)


async def test_entry_left_pending_by_a_dead_hub_is_claimed_and_applied_once(
    hubs: HubFixture, redis: Redis
):
    """A consumer that read an entry and died (never acked) is what a killed hub leaves."""
    doctor, patient, _ = await people(hubs)
    sent = event("apt-6", "scheduled", doctor_id=doctor.user_id, patient_id=patient.user_id)
    await hubs.stop(hubs.servers[0])  # no live reader, so the doomed consumer gets the entry
    await publish_event(redis, sent)
    taken = await redis.xreadgroup(APPOINTMENTS_GROUP, "killed-hub", {STREAM: ">"}, count=10)
    assert len(taken[0][1]) == 1
    await hubs.start()
    doctor = await hubs.connect(doctor.user_id, "doctor")
    updated = await doctor.wait_for("appointment:updated")
    assert updated["appointment"]["id"] == "apt-6"
    await wait_no_pending(redis)
    listed = await doctor.call("notification:list", {})
    assert len(listed["notifications"]) == 1


async def test_events_published_while_no_hub_runs_are_delivered_at_start(
    make_hub: MakeHub, settings: Settings, redis_private: embedded.ChildServer, redis: Redis
):
    hub = await make_hub(replace(settings, redis_url=redis_private.url), start=False)
    ids = {"doctor_id": hub.user("doc"), "patient_id": hub.user("pat")}
    await publish_event(redis, event("apt-7", "scheduled", **ids))
    await hub.start()
    patient = await hub.connect(ids["patient_id"], "patient")

    async def notified() -> dict:
        while True:
            listed = await patient.call("notification:list", {})
            if listed["notifications"]:
                return listed
            await patient.wait_for("notification:new", timeout=TIMEOUT)

    listed = await asyncio.wait_for(notified(), TIMEOUT)
    assert listed["notifications"][0]["appointment"]["id"] == "apt-7"


async def test_redis_restart_under_a_running_hub(
    make_hub: MakeHub, settings: Settings, tmp_path: Path
):
    port = embedded.free_port()
    server = embedded.start_redis(tmp_path / "redis", port=port)
    hub = await make_hub(replace(settings, redis_url=server.url, redis_timeout=1.0), start=False)
    try:
        await hub.start()
        doctor, patient, _ = await people(hub)
        ready_url = str(hub.servers[0].make_url("/health/ready"))
        await asyncio.to_thread(server.stop)

        async def ready_status() -> tuple[int, dict]:
            timeout = aiohttp.ClientTimeout(total=TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(ready_url) as response:
                    return response.status, await response.json()

        status, body = await ready_status()
        assert status == 503 and body["checks"]["redis"].startswith("failing")

        server = await asyncio.to_thread(embedded.start_redis, tmp_path / "redis", port=port)
        await wait_ready(hub.app(), timeout=15)
        status, body = await ready_status()
        assert status == 200, body
        client = Redis.from_url(server.url, decode_responses=True, socket_timeout=TIMEOUT)
        try:
            sent = event("apt-8", "scheduled", doctor_id=doctor.user_id, patient_id=patient.user_id)

            async def delivered() -> None:
                # The Socket.IO manager reconnects on its own schedule; publish until it did.
                while not patient.recorder.of("appointment:updated"):
                    sent["event_id"] = uuid.uuid4().hex
                    await publish_event(client, sent)
                    try:
                        await patient.wait_for("appointment:updated", timeout=1.0)
                    except TimeoutError:
                        pass

            await asyncio.wait_for(delivered(), 20)
        finally:
            await client.aclose()
    finally:
        await hub.close()  # before its Redis stops
        server.stop()


class SignallingRedis(Redis):
    """A client that says when it has sent an XREADGROUP."""

    reading: asyncio.Event

    async def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        self.reading.set()
        return await super().xreadgroup(*args, **kwargs)


async def test_stream_consumer_stops_when_a_command_dropped_the_cancel(
    redis_private: embedded.ChildServer,
):
    """Regression: redis-py sends each command through ``asyncio.wait_for``, which on
    Python 3.11 drops a cancel that arrives as the call it wraps ends (fixed in 3.12). A
    cancel right after XREADGROUP went out is dropped so, every time, and the command
    returns its reply. The stream consumer then read on forever, and the hub's shutdown
    waited on it: a test's teardown hit the 120 s timeout now and then."""
    client = SignallingRedis.from_pool(
        redis_client.connect(redis_private.url, TIMEOUT).connection_pool
    )
    client.reading = asyncio.Event()
    consumer = StreamConsumer(
        client, "cancelled", lambda _: lambda _: asyncio.sleep(0), claim_after=30.0
    )
    consumer.add(DEFAULT_TENANT)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(client.reading.wait(), TIMEOUT)
        await cancel_stops(task)
    finally:
        await client.aclose()


async def test_channel_listener_stops_when_a_call_below_it_dropped_the_cancel(
    redis_private: embedded.ChildServer, redis: Redis
):
    """As above, the cancel dropped while an event is handled."""
    entered = asyncio.Event()

    async def handle(_: Any) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass  # dropped

    client = redis_client.connect(redis_private.url, TIMEOUT)
    listener = ChannelListener(client, lambda _: handle, poll=0.1)
    listener.add(DEFAULT_TENANT)
    task = asyncio.create_task(listener.run())
    sent = orjson.dumps(event("apt-lost", "scheduled", doctor_id="d", patient_id="p"))

    async def delivered() -> None:  # the listener subscribes on its own schedule
        while not entered.is_set():
            await redis.publish(CHANNEL, sent)
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(delivered(), TIMEOUT)
        await cancel_stops(task)
    finally:
        await client.aclose()


async def test_http_path_needs_a_valid_unrevoked_key(hubs: HubFixture):
    doctor, patient, _ = await people(hubs)
    key = await service_key(hubs, "scheduling")
    sent = event("apt-9", "scheduled", doctor_id=doctor.user_id, patient_id=patient.user_id)
    assert (await post_event(hubs, sent, None))[0] == 401
    assert (await post_event(hubs, sent, key[:-2] + "xx"))[0] == 401
    assert (await post_event(hubs, sent, "hubk.nobody.secret"))[0] == 401
    status, body = await post_event(hubs, sent, key)
    assert (status, body["outcome"]) == (200, "applied")
    assert (await post_event(hubs, sent, key))[1]["outcome"] == "duplicate"
    status, body = await post_event(hubs, b"{oops", key)
    assert status == 400 and body["error"]["code"] == "bad_request"
    await hubs.app()[SERVICES].service_keys.revoke("scheduling")
    status, body = await post_event(hubs, {**sent, "event_id": "other"}, key)
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_notification_list_paging_and_ack(hubs: HubFixture, redis: Redis):
    """Waits for all five: the hub applies events of different appointments
    concurrently, so the last one published may be stored before the others."""
    doctor, patient, phone = await people(hubs)
    ids = {"doctor_id": doctor.user_id, "patient_id": patient.user_id}
    for n in range(5):
        await publish_event(redis, event(f"apt-p{n}", "scheduled", **ids, minutes=n))
    for n in range(5):
        await patient.wait_for(
            "notification:new", lambda d, n=n: d["notification"]["appointment"]["id"] == f"apt-p{n}"
        )
    first = await patient.call("notification:list", {"limit": 3})
    assert first["unread_count"] == 5 and first["has_more"] is True
    rest = await patient.call(
        "notification:list", {"limit": 3, "before": first["notifications"][-1]["id"]}
    )
    assert rest["has_more"] is False
    every = first["notifications"] + rest["notifications"]
    assert len({n["id"] for n in every}) == 5
    assert code(await doctor.call("notification:ack", {"ids": [every[0]["id"]]})) == "forbidden"
    assert await patient.call("notification:ack", {"ids": [every[0]["id"], every[1]["id"]]}) == {
        "ok": True
    }
    assert (await phone.wait_for("notification:read"))["ids"] == [every[0]["id"], every[1]["id"]]
    unread = await patient.call("notification:list", {"unread_only": True})
    assert unread["unread_count"] == 3 and len(unread["notifications"]) == 3
    assert code(await patient.call("notification:ack", {"ids": "x"})) == "bad_request"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


async def test_keys_cli_creates_shows_once_and_revokes(hubs: HubFixture):
    env = {
        **os.environ,
        "HUB_MONGODB_URL": hubs.settings.mongodb_url or "",
        "HUB_MONGODB_DB": hubs.settings.mongodb_db,
        "HUB_JWT_SECRET": JWT_SECRET,
    }
    created = await asyncio.to_thread(run_cli, "keys", "create", "billing", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("hubk.billing.")
    assert await hubs.app()[SERVICES].service_keys.verify(key) == "billing"
    listed = await asyncio.to_thread(run_cli, "keys", "list", env=env)
    assert "billing\tactive" in listed.stdout and key.split(".")[2] not in listed.stdout
    again = await asyncio.to_thread(run_cli, "keys", "create", "billing", env=env)
    assert again.returncode == 1 and "revoke it first" in again.stderr
    revoked = await asyncio.to_thread(run_cli, "keys", "revoke", "billing", env=env)
    assert revoked.returncode == 0
    with pytest.raises(Exception, match="revoked"):
        await hubs.app()[SERVICES].service_keys.verify(key)


DRAINS: set[asyncio.Task[bytes]] = set()


async def start_hub_process(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        "serve",
        env={**env, "HUB_PORT": str(port)},
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )

    async def listening() -> None:
        assert process.stderr is not None
        while line := (await process.stderr.readline()).decode():
            if "hub listening" in line:
                return
        raise AssertionError("hub process exited before listening")

    await asyncio.wait_for(listening(), 60)
    # Keep reading its log, so that a full pipe never blocks the hub.
    DRAINS.add(asyncio.create_task(process.stderr.read()))  # type: ignore[union-attr]
    return process


async def test_two_hub_processes_deliver_each_event_once(
    make_hub: MakeHub, settings: Settings, redis_private: embedded.ChildServer, redis: Redis
):
    env = {
        **os.environ,
        "HUB_MONGODB_URL": settings.mongodb_url or "",
        "HUB_MONGODB_DB": settings.mongodb_db,
        "HUB_REDIS_URL": redis_private.url,
        "HUB_JWT_SECRET": JWT_SECRET,
        "HUB_LOG_LEVEL": "INFO",
    }
    ports = [embedded.free_port(), embedded.free_port()]
    processes = [await start_hub_process(env, port) for port in ports]
    hub = await make_hub(settings, start=False)
    doctor = Client(hub.user("doc"), "doctor", hub.token(hub.user("doc"), "doctor"))
    patient = Client(hub.user("pat"), "patient", hub.token(hub.user("pat"), "patient"))
    try:
        for client, port in ((doctor, ports[0]), (patient, ports[1])):
            await client.sio.connect(
                f"http://127.0.0.1:{port}",
                auth={"token": client.token},
                transports=["websocket"],
                wait_timeout=TIMEOUT,
            )
        ids = {"doctor_id": doctor.user_id, "patient_id": patient.user_id}
        await publish_event(redis, event("apt-x", "scheduled", **ids))
        # The two processes read different entries; were both added at once, "confirmed"
        # could be applied first, making "scheduled" stale (no notification, by design).
        await patient.wait_for("notification:new")
        await publish_event(redis, event("apt-x", "confirmed", **ids, minutes=1))
        for client in (doctor, patient):
            await client.wait_for(
                "notification:new", lambda d: d["notification"]["type"] == "appointment.confirmed"
            )
            types = [d["notification"]["type"] for d in client.recorder.of("notification:new")]
            assert types == ["appointment.scheduled", "appointment.confirmed"]
        conversation_id = (await doctor.call("conversation:list", {}))["conversations"][0]["id"]
        ack = await patient.call(
            "message:send",
            {"conversation_id": conversation_id, "client_id": "p1", "body": "hello doctor"},
        )
        assert ack["ok"]
        assert (await doctor.wait_for("message:new"))["message"]["body"] == "hello doctor"
        presence = await doctor.call("presence:query", {"user_ids": [patient.user_id]})
        assert presence["online"] == {patient.user_id: True}
    finally:
        for client in (doctor, patient):
            await client.close()
        for process in processes:
            process.terminate()
        for process in processes:
            assert await asyncio.wait_for(process.wait(), 30) == 0
        await asyncio.gather(*DRAINS)
        DRAINS.clear()


async def test_appointment_list_is_the_callers_projection_soonest_first(hubs: HubFixture):
    """The console built its appointments panel from the last notifications, each with
    the appointment as it was: after a reschedule it showed the old time."""
    doctor, patient, _ = await people(hubs)
    other = hubs.user("other")
    key = await service_key(hubs)
    for appointment_id, days, patient_id in (
        ("apt-l2", 5, patient.user_id),
        ("apt-l1", 3, patient.user_id),
        ("apt-lx", 4, other),
        ("apt-old", -3, patient.user_id),
    ):
        sent = event(
            appointment_id,
            "scheduled",
            doctor_id=doctor.user_id,
            patient_id=patient_id,
            start=datetime.now(UTC) + timedelta(days=days),
        )
        assert (await post_event(hubs, sent, key))[0] == 200
    moved = datetime.now(UTC).replace(microsecond=0) + timedelta(days=6)
    assert (
        await post_event(
            hubs,
            event(
                "apt-l1",
                "scheduled",
                doctor_id=doctor.user_id,
                patient_id=patient.user_id,
                minutes=5,
                start=moved,
            ),
            key,
        )
    )[0] == 200

    listed = await patient.call("appointment:list", {})
    assert listed["ok"] and listed["has_more"] is False
    assert [a["id"] for a in listed["appointments"]] == ["apt-l2", "apt-l1"]
    assert listed["appointments"][1]["start"] == iso(moved)
    assert listed["appointments"][1]["previous_start"] is not None
    # The doctor sees every one of theirs; `from` and `limit` page through them.
    everything = await doctor.call(
        "appointment:list",
        {"from": (datetime.now(UTC) - timedelta(days=30)).isoformat(), "limit": 2},
    )
    assert [a["id"] for a in everything["appointments"]] == ["apt-old", "apt-lx"]
    assert everything["has_more"] is True
    bad = await patient.call("appointment:list", {"from": "next tuesday"})
    assert bad["ok"] is False and bad["error"]["code"] == "bad_request"
