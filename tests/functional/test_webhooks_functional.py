"""Signed webhooks out: signed, retried with backoff, dead-lettered, replayed."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from hub.core import clock
from hub.core.settings import Settings
from hub.server.appkeys import SERVICES
from storage import names
from tests.support.chat import open_pair, send
from tests.support.consultations import appointment, consultation
from tests.support.hubs import TIMEOUT, HubFixture, MakeHub
from tests.support.sms import until
from tests.support.webhook_receiver import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    fake = await Receiver(fail_first=3).start()
    yield fake
    await fake.close()


async def call(hub: HubFixture, key: str, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.request(
            method,
            hub.servers[0].make_url(path),
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as response,
    ):
        return response.status, await response.json()


def quick(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, webhook_first_retry=0.02, **changes)


async def test_deliveries_are_signed_retried_and_carry_no_health_information(
    make_hub: MakeHub, settings: Settings, receiver: Receiver
):
    hub = await make_hub(quick(settings))
    key = await hub.app()[SERVICES].service_keys.create("ehr")
    status, answer = await call(
        hub,
        key,
        "PUT",
        "/api/v1/webhooks/ehr",
        {"url": receiver.url, "events": ["message.stored", "notification.acked"]},
    )
    assert status == 200, answer
    receiver.secret = answer["webhook"]["secret"]  # made by the hub, shown once
    assert receiver.secret.startswith("whsec_")
    status, listed = await call(hub, key, "GET", "/api/v1/webhooks")
    assert "secret" not in listed["webhooks"][0]
    status, refused = await call(
        hub,
        key,
        "PUT",
        "/api/v1/webhooks/plain",
        {"url": receiver.url, "events": ["message.stored"], "phi": True},
    )
    assert status == 400 and "HTTPS" in refused["error"]["message"]

    doctor, patient, conversation_id = await open_pair(hub)
    sent = await send(patient, conversation_id, "My chest hurts when I climb stairs")
    (delivery,) = await receiver.wait_for(1)
    assert delivery["type"] == "message.stored"
    assert delivery["data"]["message_id"] == sent["message"]["id"]
    assert delivery["data"]["seq"] == sent["message"]["seq"]
    assert "body" not in delivery["data"] and "chest" not in str(delivery)
    assert receiver.tries[delivery["id"]] == 4  # three 503s, then accepted
    assert receiver.refused_signatures == 0
    outbox = hub.app()[SERVICES].db[names.WEBHOOK_OUTBOX]

    async def settled() -> dict[str, Any] | None:
        return await outbox.find_one({"_id": delivery["id"], "state": "delivered"})

    row = await until(settled)  # the receiver answered; the hub records it right after
    assert row["attempts"] == 4
    metrics = hub.app()[SERVICES].metrics.registry
    for outcome, count in (("retry", 3), ("delivered", 1)):
        assert (
            metrics.get_sample_value("hub_webhook_deliveries_total", {"outcome": outcome}) == count
        )
    assert [t.get("error") for t in row["tries"]] == ["HTTP 503"] * 3 + [None]

    await appointment(hub, doctor.user_id, patient.user_id)
    new = await patient.wait_for("notification:new")
    notification_id = new["notification"]["id"]
    ack = {"ids": [notification_id, notification_id]}
    assert (await patient.call("notification:ack", ack))["ok"]
    assert (await patient.call("notification:ack", ack))["ok"]  # again: no second event
    _, acked = await receiver.wait_for(2)
    assert acked["type"] == "notification.acked"
    assert acked["data"] == {"notification_id": notification_id, "user_id": patient.user_id}
    assert await outbox.count_documents({"type": "notification.acked"}) == 1


async def test_a_delivery_that_keeps_failing_is_dead_until_replayed(
    make_hub: MakeHub, settings: Settings, receiver: Receiver
):
    hub = await make_hub(quick(settings, webhook_give_up_after=0.5))
    key = await hub.app()[SERVICES].service_keys.create("ehr")
    receiver.secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
    receiver.failing = True
    body = {"url": receiver.url, "events": ["message.stored"], "secret": receiver.secret}
    assert (await call(hub, key, "PUT", "/api/v1/webhooks/ehr", body))[0] == 200
    doctor, patient, conversation_id = await open_pair(hub)
    await send(doctor, conversation_id, "See you on Monday")

    async def dead() -> list[dict[str, Any]]:
        return (await call(hub, key, "GET", "/api/v1/webhooks/ehr/dead"))[1]["deliveries"]

    (gone,) = await until(dead)
    assert gone["type"] == "message.stored" and gone["last_error"] == "HTTP 503"
    assert gone["attempts"] >= 2
    receiver.failing = False
    status, replayed = await call(hub, key, "POST", "/api/v1/webhooks/ehr/replay", {})
    assert status == 200 and replayed["replayed"] == 1
    (delivery,) = await receiver.wait_for(1)
    assert delivery["id"] == gone["id"]  # the same webhook-id: the receiver can dedupe
    assert await dead() == []


async def test_consultations_ended_and_exports_ready_are_told(
    make_hub: MakeHub, settings: Settings, receiver: Receiver
):
    receiver.fail_first = 0
    hub = await make_hub(quick(settings))
    key = await hub.app()[SERVICES].service_keys.create("ehr")
    events = ["consultation.ended", "export.ready"]
    status, answer = await call(
        hub, key, "PUT", "/api/v1/webhooks/ehr", {"url": receiver.url, "events": events}
    )
    receiver.secret = answer["webhook"]["secret"]
    doctor, patient, consultation_id = await consultation(hub)
    assert (await doctor.call("consultation:end", {"consultation_id": consultation_id}))["ok"]
    status, asked = await call(hub, key, "POST", "/api/v1/exports", {"patient_id": patient.user_id})
    assert status == 202
    deliveries = await receiver.wait_for(2, timeout=30)
    by_type = {d["type"]: d["data"] for d in deliveries}
    assert by_type["consultation.ended"]["consultation_id"] == consultation_id
    assert by_type["consultation.ended"]["patient_id"] == patient.user_id
    assert by_type["export.ready"] == {
        "export_id": asked["export"]["id"],
        "patient_id": patient.user_id,
        "state": "ready",
    }


async def test_a_rotated_secret_signs_beside_the_old_one_for_the_overlap(
    make_hub: MakeHub, settings: Settings
):
    """A new secret replaced the old one at once: a receiver that had not switched yet
    refused every delivery until it did."""
    receiver = await Receiver().start()
    try:
        hub = await make_hub(quick(settings, webhook_secret_overlap=3600.0))
        key = await hub.app()[SERVICES].service_keys.create("ehr")
        subscribe = {"url": receiver.url, "events": ["message.stored"]}
        status, answer = await call(hub, key, "PUT", "/api/v1/webhooks/ehr", subscribe)
        old = receiver.secret = answer["webhook"]["secret"]
        status, rotated = await call(hub, key, "POST", "/api/v1/webhooks/ehr/rotate")
        assert status == 200, rotated
        new = rotated["webhook"]["secret"]
        assert new != old and rotated["webhook"]["previous_secret_until"].endswith("Z")
        assert (await call(hub, key, "POST", "/api/v1/webhooks/nope/rotate"))[0] == 404

        # Within the overlap: both sign, so the receiver passes with either.
        doctor, patient, conversation_id = await open_pair(hub)
        await send(patient, conversation_id, "one")
        await receiver.wait_for(1)
        assert len(receiver.signatures[-1].split(" ")) == 2
        receiver.secret = new
        await send(patient, conversation_id, "two")
        await receiver.wait_for(2)
        assert receiver.refused_signatures == 0

        # After it, the new one alone. (The overlap's end is moved, not the clock: the
        # receiver's library checks the delivery's timestamp against its own.)
        services = hub.app()[SERVICES]
        await services.db[names.WEBHOOKS].update_one(
            {"_id": "ehr"}, {"$set": {"previous_until": clock.now() - timedelta(seconds=1)}}
        )
        services.webhooks.forget_subscriptions()
        await send(patient, conversation_id, "three")
        await receiver.wait_for(3)
        assert len(receiver.signatures[-1].split(" ")) == 1
        status, listed = await call(hub, key, "GET", "/api/v1/webhooks")
        assert "previous_secret_until" not in listed["webhooks"][0]
        # A PUT with another secret overlaps the same way.
        chosen = "whsec_" + base64.b64encode(b"k" * 32).decode()
        status, _ = await call(
            hub, key, "PUT", "/api/v1/webhooks/ehr", {**subscribe, "secret": chosen}
        )
        assert status == 200
        await send(patient, conversation_id, "four")
        await receiver.wait_for(4)
        assert len(receiver.signatures[-1].split(" ")) == 2 and receiver.refused_signatures == 0
    finally:
        await receiver.close()
