"""The client SDK (clients/js, in Node) against real hubs: its outbox across a hub that
is down, killed between store and ack, and a reload; its sync across edits,
retractions and retention; its session and its storage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from hub.core import clock
from hub.core.auth import issue_token
from hub.core.settings import Settings
from hub.server.appkeys import ROUTER, SERVICES
from storage import names
from tests.support.chat import send
from tests.support.faults import FailoverProxy, HubProcess, all_messages, connect, hub_env
from tests.support.hubs import TIMEOUT, Client, HubFixture, MakeHub, until
from tests.support.sdk import Agent, sdk_agent

pytestmark = pytest.mark.clock  # tokens and retention are dated


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    async with sdk_agent() as running:
        yield running


def bodies(messages: list[dict[str, Any]]) -> list[str]:
    return [m["body"] for m in messages]


async def conversation(doctor: Client, patient_id: str) -> str:
    opened = await doctor.call("conversation:open", {"member_ids": [patient_id]})
    assert opened["ok"], opened
    return str(opened["conversation"]["id"])


async def test_messages_sent_while_the_hub_is_down_are_stored_once_in_order(
    settings: Settings, agent: Agent
):
    env = hub_env(settings)
    first = await HubProcess.start(env)
    doctor = await connect(settings, first.url, "dr-down", "doctor")
    conversation_id = await conversation(doctor, "pat-down")
    await doctor.close()
    assert await first.stop() == 0

    token = issue_token(settings, "pat-down", "patient")
    await agent("client", name="phone", url=first.url, token=token)
    sent = [
        await agent("send", name="phone", conversation_id=conversation_id, body=f"m{n}")
        for n in range(1, 4)
    ]
    assert [m["status"] for m in sent] == ["pending"] * 3
    assert (await agent("status", name="phone"))["state"] in ("connecting", "offline")

    second = await HubProcess.start(env)  # the same address, as after a restart
    try:
        await agent("wait", name="phone", state="online", timeout=30)
        await agent("wait_outbox_empty", name="phone")
        doctor = await connect(settings, second.url, "dr-down", "doctor")
        stored = await all_messages(doctor, conversation_id)
        assert bodies(stored) == ["m1", "m2", "m3"]
        assert [m["client_id"] for m in stored] == [m["client_id"] for m in sent]
        shown = await agent("messages", name="phone", conversation_id=conversation_id)
        assert [(m["body"], m["seq"], m["status"]) for m in shown] == [
            ("m1", 1, "sent"),
            ("m2", 2, "sent"),
            ("m3", 3, "sent"),
        ]
        await doctor.close()
    finally:
        await agent("close", name="phone")
        await second.stop()


async def test_a_hub_killed_between_store_and_ack_loses_nothing_and_stores_nothing_twice(
    settings: Settings, agent: Agent
):
    env = hub_env(settings)
    first = await HubProcess.start(env)
    proxy = await FailoverProxy([first.port]).start()
    doctor = await connect(settings, first.url, "dr-kill", "doctor", reconnection=False)
    conversation_id = await conversation(doctor, "pat-kill")
    token = issue_token(settings, "pat-kill", "patient")
    await agent("client", name="phone", url=proxy.url, token=token)
    await agent("wait", name="phone", state="online")

    proxy.answers.clear()  # from here the phone hears nothing: the ack will not reach it
    await agent("send", name="phone", conversation_id=conversation_id, body="stored, unacked")
    stored = await doctor.wait_for("message:new", timeout=TIMEOUT)
    assert stored["message"]["body"] == "stored, unacked"
    first.kill()
    await first.process.wait()
    await doctor.close()
    proxy.answers.set()
    second = await HubProcess.start(env)
    try:
        await agent("wait_outbox_empty", name="phone", timeout=30)
        doctor = await connect(settings, second.url, "dr-kill", "doctor")
        assert bodies(await all_messages(doctor, conversation_id)) == ["stored, unacked"]
        shown = await agent("messages", name="phone", conversation_id=conversation_id)
        assert [(m["body"], m["seq"], m["status"]) for m in shown] == [
            ("stored, unacked", 1, "sent")
        ]
        await doctor.close()
    finally:
        await agent("close", name="phone")
        await proxy.close()
        await second.stop()


async def test_a_reload_finishes_the_outbox_exactly_once(settings: Settings, agent: Agent):
    env = hub_env(settings)
    hub = await HubProcess.start(env)
    doctor = await connect(settings, hub.url, "dr-reload", "doctor")
    conversation_id = await conversation(doctor, "pat-reload")
    await doctor.close()
    assert await hub.stop() == 0
    token = issue_token(settings, "pat-reload", "patient")
    await agent("client", name="before", url=hub.url, token=token, storage="phone")
    for n in (1, 2):
        await agent("send", name="before", conversation_id=conversation_id, body=f"r{n}")
    await agent("persisted", name="before")
    await agent("close", name="before")  # the app is closed with its outbox full

    hub = await HubProcess.start(env)
    try:
        await agent("client", name="after", url=hub.url, token=token, storage="phone")
        assert [m["body"] for m in await agent("pending", name="after")] == ["r1", "r2"]
        await agent("wait_outbox_empty", name="after", timeout=30)
        # And once more: a second reload has nothing left to send.
        await agent("close", name="after")
        await agent("client", name="again", url=hub.url, token=token, storage="phone")
        await agent("wait", name="again", state="online")
        assert await agent("pending", name="again") == []
        doctor = await connect(settings, hub.url, "dr-reload", "doctor")
        assert bodies(await all_messages(doctor, conversation_id)) == ["r1", "r2"]
        await doctor.close()
    finally:
        await agent("close", name="again")
        await hub.stop()


async def test_changes_made_while_offline_are_applied_on_reconnect(hub: HubFixture, agent: Agent):
    """Edits, retractions and the retention policy's deletions, made while the phone was
    away, reach it at its next connection; it holds each message once, in seq order."""
    doctor = await hub.connect(hub.user("dr"), "doctor")
    patient_id = hub.user("pat")
    conversation_id = await conversation(doctor, patient_id)
    for n in range(1, 6):
        assert (await send(doctor, conversation_id, f"note {n}"))["ok"]
    url = str(hub.servers[0].make_url("/"))
    await agent("client", name="phone", url=url, token=hub.token(patient_id, "patient"))
    await agent("wait", name="phone", state="online")
    await agent("wait_messages", name="phone", conversation_id=conversation_id, count=5)
    await agent("close", name="phone")

    edited = await doctor.call(
        "message:edit", {"conversation_id": conversation_id, "seq": 4, "body": "note 4, fixed"}
    )
    assert edited["ok"], edited
    retracted = await doctor.call(
        "message:retract", {"conversation_id": conversation_id, "seq": 5, "reason": "wrong"}
    )
    assert retracted["ok"], retracted
    services = hub.app()[SERVICES]
    old = datetime.now(UTC) - timedelta(days=400)
    await services.db[names.MESSAGES].update_many(
        {"conversation_id": conversation_id, "seq": {"$lte": 2}}, {"$set": {"created_at": old}}
    )
    await services.retention.store.put_policy({"messages": 365})
    await services.retention.run()
    assert (await send(doctor, conversation_id, "note 6"))["ok"]

    await agent(
        "client", name="phone", url=url, token=hub.token(patient_id, "patient"), storage="phone"
    )
    await agent("wait", name="phone", state="online")
    shown = await agent("messages", name="phone", conversation_id=conversation_id)
    assert [(m["seq"], m["body"], bool(m.get("retracted"))) for m in shown] == [
        (3, "note 3", False),
        (4, "note 4, fixed", False),
        (5, "", True),
        (6, "note 6", False),
    ]
    await agent("close", name="phone")


async def test_a_token_refresh_keeps_the_same_socket(
    make_hub: MakeHub, settings: Settings, agent: Agent
):
    # A token of 60 s, warned 58 s ahead: session:expiring comes 2 s after the connect.
    hub = await make_hub(replace(settings, session_warning=58))
    patient_id = hub.user("pat")
    url = str(hub.servers[0].make_url("/"))
    await agent("client", name="phone", url=url, token=hub.token(patient_id, "patient", ttl=60))
    before = await agent("wait", name="phone", state="online")
    fresh = hub.token(patient_id, "patient", ttl=3600)
    await agent("token", name="phone", token=fresh)
    router = hub.app()[ROUTER]

    def refreshed() -> bool:
        connection = router.connections.get(before["socket"])
        expires_at = connection.principal.expires_at if connection is not None else None
        return expires_at is not None and expires_at > clock.timestamp() + 1800

    await until(refreshed, timeout=10)
    after = await agent("status", name="phone")
    assert after["socket"] == before["socket"] and after["state"] == "online"
    assert after["tokens"] > before["tokens"]
    await agent("close", name="phone")


async def test_sign_out_leaves_nothing_and_another_person_never_sees_the_last_ones_data(
    hub: HubFixture, agent: Agent
):
    doctor = await hub.connect(hub.user("dr"), "doctor")
    first, second = hub.user("first"), hub.user("second")
    conversation_id = await conversation(doctor, first)
    assert (await send(doctor, conversation_id, "for the first patient only"))["ok"]
    url = str(hub.servers[0].make_url("/"))
    await agent("client", name="a", url=url, token=hub.token(first, "patient"), storage="shared")
    await agent("wait_messages", name="a", conversation_id=conversation_id, count=1)
    await agent("close", name="a")
    assert await agent("storage_keys", storage="shared")

    # Another person on the same device: the first one's data is wiped before use.
    await agent("client", name="b", url=url, token=hub.token(second, "patient"), storage="shared")
    await agent("wait", name="b", state="online")
    assert await agent("messages", name="b", conversation_id=conversation_id) == []
    assert await agent("conversations", name="b") == []

    await agent("sign_out", name="b")
    assert await agent("storage_keys", storage="shared") == []

    # persist: false writes nothing at all.
    await agent(
        "client",
        name="c",
        url=url,
        token=hub.token(first, "patient"),
        storage="kiosk",
        persist=False,
    )
    await agent("wait_messages", name="c", conversation_id=conversation_id, count=1)
    await agent("close", name="c")
    assert await agent("storage_keys", storage="kiosk") == []


async def test_two_devices_of_one_person_stay_consistent(hub: HubFixture, agent: Agent):
    doctor = await hub.connect(hub.user("dr"), "doctor")
    patient_id = hub.user("pat")
    conversation_id = await conversation(doctor, patient_id)
    url = str(hub.servers[0].make_url("/"))
    for name in ("phone", "laptop"):
        await agent("client", name=name, url=url, token=hub.token(patient_id, "patient"))
        await agent("wait", name=name, state="online")
    for n in range(3):
        await agent("send", name="phone", conversation_id=conversation_id, body=f"p{n}")
    await agent("wait_outbox_empty", name="phone")
    assert (await send(doctor, conversation_id, "from the doctor"))["ok"]
    for name in ("phone", "laptop"):
        await agent("wait_messages", name=name, conversation_id=conversation_id, count=4)
    await agent("wait_unread", name="laptop", conversation_id=conversation_id, unread=1)
    await agent("mark_read", name="phone", conversation_id=conversation_id)
    await agent("wait_unread", name="laptop", conversation_id=conversation_id, unread=0)
    await agent("edit", name="laptop", conversation_id=conversation_id, seq=1, body="p0, edited")
    views = []
    for name in ("phone", "laptop"):
        await agent(
            "wait_body", name=name, conversation_id=conversation_id, seq=1, body="p0, edited"
        )
        shown = await agent("messages", name=name, conversation_id=conversation_id)
        views.append([(m["seq"], m["body"], m["sender_id"]) for m in shown])
    assert views[0] == views[1]
    assert [body for _, body, _ in views[0]] == ["p0, edited", "p1", "p2", "from the doctor"]
    for name in ("phone", "laptop"):
        await agent("close", name=name)


async def test_a_refused_token_is_a_state_of_its_own_and_not_retried(hub: HubFixture, agent: Agent):
    url = str(hub.servers[0].make_url("/"))
    await agent("client", name="phone", url=url, token="not-a-jwt")
    status = await agent("wait", name="phone", state="unauthorized")
    assert status["error"]["code"] == "unauthorized" and not status["error"]["retryable"]
    tokens = status["tokens"]
    # Waiting for something not to happen: a refused token is not tried again, and
    # the official client's reconnection would have asked for one within 0.3 s.
    await asyncio.sleep(1.0)
    assert (await agent("status", name="phone"))["tokens"] == tokens
    await agent("close", name="phone")


async def test_uploads_report_progress_and_can_be_cancelled(hub: HubFixture, agent: Agent):
    doctor = await hub.connect(hub.user("dr"), "doctor")
    patient_id = hub.user("pat")
    conversation_id = await conversation(doctor, patient_id)
    url = str(hub.servers[0].make_url("/"))
    await agent("client", name="phone", url=url, token=hub.token(patient_id, "patient"))
    await agent("wait", name="phone", state="online")
    refused = await agent(
        "upload", name="phone", conversation_id=conversation_id, size=300_000, file_name="a.pdf"
    )
    # Zeros are no PDF: the hub refuses it by its bytes, with its code.
    assert refused["error"]["code"] == "unsupported_type" and not refused["error"]["retryable"]
    assert refused["progress"][-1] == 1 and len(refused["progress"]) > 2
    cancelled = await agent(
        "upload",
        name="phone",
        conversation_id=conversation_id,
        size=4_000_000,
        file_name="b.pdf",
        cancel_at=0.1,
    )
    assert cancelled["error"]["message"] == "the upload was cancelled"
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "health") as response:
            assert response.status == 200  # the hub is fine after the cut-off upload
    await agent("close", name="phone")


async def test_a_refused_message_fails_with_the_hubs_code_and_the_next_ones_go_on(
    hub: HubFixture, agent: Agent
):
    doctor = await hub.connect(hub.user("dr"), "doctor")
    patient_id = hub.user("pat")
    conversation_id = await conversation(doctor, patient_id)
    strangers = await conversation(doctor, hub.user("someone-else"))
    url = str(hub.servers[0].make_url("/"))
    await agent("client", name="phone", url=url, token=hub.token(patient_id, "patient"))
    await agent("wait", name="phone", state="online")
    refused = await agent("send", name="phone", conversation_id=strangers, body="not mine")
    await agent("send", name="phone", conversation_id=conversation_id, body="after it")
    [failed] = [m for m in await agent("wait_failed", name="phone") if m["status"] == "failed"]
    assert failed["client_id"] == refused["client_id"]
    assert failed["error"]["code"] == "forbidden" and not failed["error"]["retryable"]
    await agent("wait_messages", name="phone", conversation_id=conversation_id, count=1)
    await agent("retry", name="phone", client_id=refused["client_id"])  # refused again
    [again] = [m for m in await agent("wait_failed", name="phone") if m["status"] == "failed"]
    assert again["client_id"] == refused["client_id"]
    await agent("discard", name="phone", client_id=refused["client_id"])
    assert await agent("pending", name="phone") == []
    synced = await doctor.call("sync", {"cursors": {strangers: 0}})
    assert [m for m in synced["messages"] if m["conversation_id"] == strangers] == []
    await agent("close", name="phone")


async def test_a_new_device_pages_back_through_what_was_read_elsewhere(
    hub: HubFixture, agent: Agent
):
    doctor = await hub.connect(hub.user("dr"), "doctor")
    patient = await hub.connect(hub.user("pat"), "patient")
    conversation_id = await conversation(doctor, patient.user_id)
    for n in range(1, 121):
        assert (await send(doctor, conversation_id, f"m{n}"))["ok"]
    read = await patient.call("message:read", {"conversation_id": conversation_id, "seq": 100})
    assert read["ok"], read
    url = str(hub.servers[0].make_url("/"))
    await agent("client", name="tablet", url=url, token=hub.token(patient.user_id, "patient"))
    await agent("wait", name="tablet", state="online")
    [view] = await agent("conversations", name="tablet")
    assert view["unread"] == 20  # sync brought what was not read: 101-120
    shown = await agent("messages", name="tablet", conversation_id=conversation_id)
    assert [m["seq"] for m in shown] == list(range(101, 121))
    assert await agent("load_older", name="tablet", conversation_id=conversation_id, limit=60)
    assert not await agent("load_older", name="tablet", conversation_id=conversation_id, limit=60)
    shown = await agent("messages", name="tablet", conversation_id=conversation_id)
    assert [m["seq"] for m in shown] == list(range(1, 121))
    device = await agent("register_fcm", name="tablet", token="fcm-token-1", platform="android")
    stored = await hub.app()[SERVICES].db[names.PUSH_DEVICES].find_one({"_id": device})
    assert stored is not None and stored["user_id"] == patient.user_id
    await agent("close", name="tablet")
