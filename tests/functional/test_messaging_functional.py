"""Chat over Socket.IO against a real hub, SecantusDB and redis-server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from hub.core.settings import Settings
from hub.server.appkeys import SERVICES
from storage import names
from storage.messages import MessageStore
from tests.support.chat import open_pair
from tests.support.hubs import Client, HubFixture


async def test_message_is_stored_acked_and_delivered_to_every_other_device(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    patient_phone = await hub.connect(patient.user_id, "patient")
    doctor_tablet = await hub.connect(doctor.user_id, "doctor")

    ack = await doctor.call(
        "message:send", {"conversation_id": conversation_id, "client_id": "m1", "body": "Hello"}
    )
    assert ack["ok"], ack
    message = ack["message"]
    assert message["seq"] == 1
    assert message["sender_id"] == doctor.user_id
    assert message["body"] == "Hello"
    assert message["created_at"].endswith("Z")

    for device in (patient, patient_phone, doctor_tablet):
        pushed = await device.wait_for("message:new")
        assert pushed["message"] == message
    # The sending socket gets its ack, not an echo.
    history = await doctor.call("message:history", {"conversation_id": conversation_id})
    assert [m["body"] for m in history["messages"]] == ["Hello"]
    assert doctor.recorder.of("message:new") == []


async def test_resend_with_same_client_id_returns_original_and_emits_nothing(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    payload = {"conversation_id": conversation_id, "client_id": "same", "body": "once"}
    first = await doctor.call("message:send", payload)
    await patient.wait_for("message:new")
    second = await doctor.call("message:send", {**payload, "body": "changed on resend"})
    assert second == first
    marker = await doctor.call(
        "message:send", {"conversation_id": conversation_id, "client_id": "after", "body": "x"}
    )
    await patient.wait_for("message:new", lambda d: d["message"]["id"] == marker["message"]["id"])
    assert [d["message"]["seq"] for d in patient.recorder.of("message:new")] == [1, 2]


async def test_a_whole_outbox_resent_at_once_is_answered_with_the_originals(hub: HubFixture):
    """Regression: the writer settled one resend per round and gave up after eight, so
    a client resending its outbox after a reconnect got ``unavailable`` for most of it
    (found by the chat benchmark)."""
    doctor, patient, conversation_id = await open_pair(hub)

    def payload(n: int) -> dict:
        return {"conversation_id": conversation_id, "client_id": f"out-{n}", "body": f"m{n}"}

    originals = await asyncio.gather(*(doctor.call("message:send", payload(n)) for n in range(40)))
    assert all(a["ok"] for a in originals)
    # All forty again, mixed with ten new ones, in one burst (one or a few batches).
    again = await asyncio.gather(*(doctor.call("message:send", payload(n)) for n in range(50)))
    assert again[:40] == originals
    assert all(a["ok"] for a in again[40:])
    seqs = sorted(a["message"]["seq"] for a in again)
    assert seqs == list(range(1, 51))  # the new ones continue the sequence, no gap


async def test_concurrent_sends_get_gapless_increasing_seqs(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    doctor_tablet = await hub.connect(doctor.user_id, "doctor")

    async def send(client: Client, n: int) -> dict:
        return await client.call(
            "message:send",
            {
                "conversation_id": conversation_id,
                "client_id": f"{client.sio.sid}-{n}",
                "body": f"m{n}",
            },
        )

    acks = await asyncio.gather(
        *(send(c, n) for n in range(60) for c in (doctor, patient, doctor_tablet))
    )
    assert all(a["ok"] for a in acks)
    seqs = sorted(a["message"]["seq"] for a in acks)
    assert seqs == list(range(1, 181))
    listed = await patient.call("conversation:list", {})
    assert listed["conversations"][0]["last_seq"] == 180


async def test_history_pages_backwards_in_ascending_order(hub: HubFixture):
    doctor, _, conversation_id = await open_pair(hub)
    for n in range(1, 8):
        await doctor.call(
            "message:send",
            {"conversation_id": conversation_id, "client_id": f"c{n}", "body": f"b{n}"},
        )
    page = await doctor.call("message:history", {"conversation_id": conversation_id, "limit": 3})
    assert [m["seq"] for m in page["messages"]] == [5, 6, 7]
    assert page["has_more"] is True
    page = await doctor.call(
        "message:history", {"conversation_id": conversation_id, "limit": 5, "before_seq": 5}
    )
    assert [m["seq"] for m in page["messages"]] == [1, 2, 3, 4]
    assert page["has_more"] is False


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_both_transports_work(hub: HubFixture, transport: str):
    doctor = await hub.connect(hub.user("doc"), "doctor", transports=[transport])
    patient = await hub.connect(hub.user("pat"), "patient", transports=[transport])
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    ack = await patient.call(
        "message:send",
        {"conversation_id": opened["conversation"]["id"], "client_id": "p1", "body": "hi"},
    )
    assert ack["ok"]
    assert (await doctor.wait_for("message:new"))["message"]["body"] == "hi"


class _Commands(monitoring.CommandListener):
    """The commands a client sent, by name and collection."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        collection = event.command.get(event.command_name)
        self.sent.append((event.command_name, str(collection)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_batch_of_sends_is_one_insert_into_messages_and_nothing_else(settings: Settings):
    """Each message is written once: the send path inserts messages and writes nothing
    else (before, each batch also raised every conversation's ``last_seq``)."""
    assert settings.mongodb_url is not None
    commands = _Commands()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        settings.mongodb_url, timeoutMS=5000, tz_aware=True, event_listeners=[commands]
    )
    store = MessageStore(client[settings.mongodb_db], timeout=5.0)
    store.start()
    conversations = [f"c-one-write-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    try:
        sent = await asyncio.gather(
            *(store.send(c, "dr", f"m{i}", "hello") for c in conversations for i in range(20))
        )
        writes = [c for c in commands.sent if c[0] in ("insert", "update", "bulkWrite", "delete")]
        assert writes and set(writes) == {("insert", names.MESSAGES)}
        assert len(writes) == store.batches_written  # one insert per batch
        for conversation_id in conversations:
            seqs = sorted(m.seq for m, _ in sent if m.conversation_id == conversation_id)
            assert seqs == list(range(1, 21))
            assert await store.last_seq(conversation_id) == 20
    finally:
        await store.close()
        await client.close()


async def test_a_hub_reads_conversations_that_carry_the_old_last_seq_field(hub: HubFixture):
    """Data written before messages became the only record of seq: a conversation
    document with its own ``last_seq`` (here stale on purpose) and its messages. The
    hub numbers on from the messages and lists their last seq."""
    doctor, patient, conversation_id = await open_pair(hub)
    for body in ("one", "two"):
        assert (
            await doctor.call(
                "message:send",
                {"conversation_id": conversation_id, "client_id": body, "body": body},
            )
        )["ok"]
    db = hub.app()[SERVICES].db
    await db[names.CONVERSATIONS].update_one({"_id": conversation_id}, {"$set": {"last_seq": 1}})
    third = await doctor.call(
        "message:send", {"conversation_id": conversation_id, "client_id": "three", "body": "3"}
    )
    assert third["message"]["seq"] == 3
    listed = await patient.call("conversation:list", {})
    assert [c["last_seq"] for c in listed["conversations"] if c["id"] == conversation_id] == [3]
    reopened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    assert reopened["conversation"]["last_seq"] == 3
