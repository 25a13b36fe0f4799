"""Push notifications end to end: a real hub and Celery workers on a real Redis, the
real pywebpush and google-auth clients talking to local servers that follow the Web
Push and FCM HTTP v1 APIs (tests/support/fake_push.py), then the SMS after them."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from pymongo import AsyncMongoClient, MongoClient

from channels.names import SOCKETIO_CHANNEL
from hub.core import clock
from hub.core.settings import Settings, vapid_key_pair
from hub.server import embedded
from hub.server.appkeys import SERVICES
from storage import names
from storage.push import device_id
from storage.push_outbox import PushOutbox
from tests.support.chat import code
from tests.support.fake_push import FakePush
from tests.support.hubs import Client, HubFixture
from tests.support.sms import (
    CLINIC,
    DAYTIME,
    NIGHT,
    SMS_TIMEOUT,
    Backend,
    Stack,
    new_phone,
    outbox,
    own_stack,
    until,
)
from workers.push_services import web_push_topic

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks

AFTER_PUSH = 3.0  # HUB_SMS_AFTER_PUSH in these tests


@pytest.fixture
async def push_stack(
    mongodb_server: embedded.ChildServer, tmp_path: Path, settings: Settings
) -> AsyncIterator[tuple[Stack, HubFixture, FakePush, str]]:
    fake = FakePush().start()
    private, public = vapid_key_pair()
    credentials = fake.service_account(tmp_path / "service-account.json")
    try:
        async with own_stack(
            mongodb_server,
            tmp_path,
            settings,
            HUB_VAPID_PRIVATE_KEY=private,
            HUB_VAPID_SUBJECT="mailto:it@clinic.test",
            HUB_FCM_CREDENTIALS=str(credentials),
            HUB_FCM_BASE_URL=fake.url,
            HUB_SMS_AFTER_PUSH=str(AFTER_PUSH),
            HUB_PUSH_TIMEOUT="2",
            HUB_PUSH_UNCHECKED_ORIGINS=fake.url,  # the fake push service, on loopback
        ) as (stack, hub):
            hub.channel = SOCKETIO_CHANNEL
            stack.start_worker()
            await hub.start()
            yield stack, hub, fake, public
    finally:
        fake.stop()


@pytest.fixture
async def mongo(push_stack: tuple[Stack, HubFixture, FakePush, str]) -> AsyncIterator[Any]:
    stack = push_stack[0]
    client: AsyncMongoClient = AsyncMongoClient(stack.mongodb_url, timeoutMS=5000)
    yield client[stack.db_name]
    await client.close()


async def backend_of(hub: HubFixture) -> Backend:
    key = await hub.app()[SERVICES].service_keys.create(f"backend-{uuid.uuid4().hex[:6]}")
    return Backend(hub, key)


async def in_daytime(hub: HubFixture, patient: Client) -> None:
    """Give the patient a time zone where it is day now: without one, quiet hours are
    read in UTC and hold every push sent at night (UTC)."""
    await (await backend_of(hub)).put_contact(
        patient.user_id, new_phone(), timezone=DAYTIME, opt_in=False
    )


async def register_devices(client: Client, fake: FakePush, fcm_token: str) -> tuple[str, str]:
    web = await client.call(
        "push:register",
        {"kind": "webpush", "subscription": fake.subscribe().to_json(), "locale": "en-US"},
    )
    fcm = await client.call(
        "push:register", {"kind": "fcm", "token": fcm_token, "platform": "android"}
    )
    assert web["ok"] and fcm["ok"], (web, fcm)
    return web["device"]["id"], fcm["device"]["id"]


async def gone_offline(hub: HubFixture, client: Client) -> None:
    """Disconnect ``client`` and wait until the hub counts the user offline."""
    await client.sio.disconnect()
    presence = hub.app()[SERVICES].presence

    async def offline() -> bool:
        return not (await presence.online([client.user_id])).get(client.user_id)

    await until(offline)


async def test_offline_patient_gets_pushes_at_once_and_the_sms_only_later(push_stack, mongo):
    stack, hub, fake, public = push_stack
    backend = await backend_of(hub)
    doctor = await hub.connect(hub.user("dr"), "doctor")
    patient = await hub.connect(hub.user("pat"), "patient")
    phone = new_phone()
    await backend.put_contact(patient.user_id, phone)
    await register_devices(patient, fake, "fcm-token-" + uuid.uuid4().hex)
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    conversation_id = opened["conversation"]["id"]
    await gone_offline(hub, patient)

    secret = "Your HIV test came back positive"
    sent = await doctor.call(
        "message:send",
        {"conversation_id": conversation_id, "client_id": uuid.uuid4().hex, "body": secret},
    )
    assert sent["ok"], sent
    [web] = await asyncio.to_thread(fake.wait_for, 1, SMS_TIMEOUT)
    [fcm] = await asyncio.to_thread(fake.wait_for, 1, SMS_TIMEOUT, "fcm")

    # Web Push: decrypted with the subscription's key, signed with the hub's VAPID key.
    assert web["payload"] == {
        "title": CLINIC,
        "body": f"New message from {CLINIC}.",
        "tag": f"conversation:{conversation_id}",
        "badge": 1,
        "data": {"type": "message", "conversation_id": conversation_id, "seq": "1"},
    }
    assert web["vapid_key"] == public and web["vapid"]["sub"] == "mailto:it@clinic.test"
    assert web["vapid"]["exp"] > time.time()
    # RFC 8030's Topic: at most 32 characters of base64url (no colon: Mozilla answers 400).
    assert web["topic"] == web_push_topic(f"conversation:{conversation_id}")
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,32}", web["topic"]) and web["ttl"] == str(24 * 3600)
    # FCM v1: the message shape, one line per conversation on Android and iOS.
    assert fcm["notification"] == {"title": CLINIC, "body": f"New message from {CLINIC}."}
    assert fcm["android"]["collapse_key"] == f"conversation:{conversation_id}"
    assert fcm["apns"]["headers"]["apns-collapse-id"] == f"conversation:{conversation_id}"
    assert fcm["apns"]["payload"]["aps"]["badge"] == 1
    assert fake.tokens_issued == 1
    for pushed in (web["raw"].decode(), json.dumps(fcm)):
        assert "HIV" not in pushed and "positive" not in pushed

    # The SMS comes after HUB_SMS_AFTER_PUSH, the message still unread.
    row = await outbox(mongo, f"message:{conversation_id}:{patient.user_id}:1", "queued", "sent")
    stored_at = datetime.fromisoformat(sent["message"]["created_at"].replace("Z", "+00:00"))
    sms_at = row["created_at"].replace(tzinfo=UTC)
    assert web["at"] < sms_at and (sms_at - stored_at).total_seconds() >= AFTER_PUSH - 0.3
    [sms] = stack.twilio.to(phone)
    assert secret not in sms["body"]
    rows = await mongo[names.PUSH_OUTBOX].find({}).to_list(None)
    assert sorted(r["state"] for r in rows) == ["sent", "sent"]


async def test_a_notification_acked_after_the_push_gets_no_sms(push_stack, mongo):
    stack, hub, fake, _ = push_stack
    backend = await backend_of(hub)
    patient = await hub.connect(hub.user("pat"), "patient")
    phone = new_phone()
    await backend.put_contact(patient.user_id, phone)
    await register_devices(patient, fake, "fcm-token-" + uuid.uuid4().hex)
    await gone_offline(hub, patient)
    notification = await backend.appointment(
        patient.user_id, "confirmed", reason="biopsy of a suspected melanoma"
    )
    [web] = await asyncio.to_thread(fake.wait_for, 1, SMS_TIMEOUT)
    assert web["payload"]["body"].startswith("Your appointment on ")
    assert "melanoma" not in web["raw"].decode() and "biopsy" not in web["raw"].decode()
    assert web["payload"]["data"]["type"] == "appointment"
    back = await hub.connect(patient.user_id, "patient")
    listed = await back.call("notification:list", {})
    ids = [n["id"] for n in listed["notifications"]]
    assert (await back.call("notification:ack", {"ids": ids}))["ok"]
    row = await outbox(mongo, f"notification:{notification}", "skipped", "queued", "sent")
    assert (row["state"], row.get("reason")) == ("skipped", "acked")
    assert stack.twilio.to(phone) == []


async def test_quiet_hours_hold_pushes_too(push_stack, mongo):
    stack, hub, fake, _ = push_stack
    backend = await backend_of(hub)
    patient = await hub.connect(hub.user("pat"), "patient")
    await backend.put_contact(patient.user_id, new_phone(), timezone=NIGHT)
    await patient.call(
        "push:register", {"kind": "webpush", "subscription": fake.subscribe().to_json()}
    )
    await gone_offline(hub, patient)
    await backend.appointment(patient.user_id, "cancelled")
    row = await until(lambda: mongo[names.PUSH_OUTBOX].find_one({"state": "deferred"}))
    local_end = row["deferred_until"].replace(tzinfo=UTC).astimezone(ZoneInfo(NIGHT))
    assert (local_end.hour, local_end.minute) == (8, 0)
    assert fake.web == []


async def test_gone_devices_are_deleted_and_failures_retried(push_stack, mongo):
    stack, hub, fake, _ = push_stack
    doctor = await hub.connect(hub.user("dr"), "doctor")
    patient = await hub.connect(hub.user("pat"), "patient")
    await in_daytime(hub, patient)
    gone = fake.subscribe()
    fake.gone.add(gone.subscription_id)
    await patient.call("push:register", {"kind": "webpush", "subscription": gone.to_json()})
    await patient.call(
        "push:register", {"kind": "fcm", "token": "gone-" + uuid.uuid4().hex, "platform": "ios"}
    )
    alive = fake.subscribe()
    await patient.call("push:register", {"kind": "webpush", "subscription": alive.to_json()})
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    conversation_id = opened["conversation"]["id"]
    await gone_offline(hub, patient)
    fake.fail_next = [503]  # the first request: the service is overloaded
    await doctor.call(
        "message:send",
        {"conversation_id": conversation_id, "client_id": uuid.uuid4().hex, "body": "hi"},
    )
    [web] = await asyncio.to_thread(fake.wait_for, 1, SMS_TIMEOUT)
    assert web["subscription_id"] == alive.subscription_id
    devices = await until(
        lambda: _devices_if(mongo, patient.user_id, lambda found: len(found) == 1)
    )
    assert devices[0]["address"] == alive.endpoint
    states = await until(
        lambda: _states_if(mongo, lambda found: sorted(found) == ["gone", "gone", "sent"])
    )
    assert states


async def _devices_if(mongo: Any, user_id: str, ok: Any) -> list[dict[str, Any]] | None:
    found = await mongo[names.PUSH_DEVICES].find({"user_id": user_id}).to_list(None)
    return found if ok(found) else None


async def _states_if(mongo: Any, ok: Any) -> list[str] | None:
    found = [r["state"] for r in await mongo[names.PUSH_OUTBOX].find({}).to_list(None)]
    return found if ok(found) else None


async def test_registration_rules_and_the_vapid_key(push_stack, mongo):
    stack, hub, fake, public = push_stack
    front_desk = fake.subscribe().to_json()  # a tablet shared by two people
    first = await hub.connect(hub.user("nurse-a"), "doctor")
    second = await hub.connect(hub.user("nurse-b"), "doctor")
    one = await first.call("push:register", {"kind": "webpush", "subscription": front_desk})
    two = await second.call("push:register", {"kind": "webpush", "subscription": front_desk})
    assert one["device"]["id"] == two["device"]["id"]
    stored = await mongo[names.PUSH_DEVICES].find({"_id": one["device"]["id"]}).to_list(None)
    assert [d["user_id"] for d in stored] == [second.user_id]
    assert code(await first.call("push:unregister", {"device_id": one["device"]["id"]})) == (
        "not_found"
    )
    assert (await second.call("push:unregister", {"device_id": one["device"]["id"]}))["ok"]
    assert await mongo[names.PUSH_DEVICES].count_documents({}) == 0

    bad = [
        {"kind": "webpush"},
        {"kind": "webpush", "subscription": {"endpoint": "javascript:alert(1)", "keys": {}}},
        {"kind": "fcm", "token": "t"},
        {"kind": "fcm", "token": "t", "platform": "windows"},
        {"kind": "apns", "token": "t"},
    ]
    for payload in bad:
        assert code(await first.call("push:register", payload)) == "bad_request", payload

    # What a browser never sends, refused naming the field: the worker would otherwise
    # POST wherever a patient pointed it (plain http, or inside the clinic's network),
    # or fail on the keys.
    good = fake.subscribe().to_json()
    refused = {
        "subscription.endpoint: must be https": {**good, "endpoint": "http://push.example.org/x"},
        "subscription.endpoint: its host is not a public address": {
            **good,
            "endpoint": "https://127.0.0.1:8443/wp/x",
        },
        "subscription.keys.p256dh": {**good, "keys": {**good["keys"], "p256dh": "AAAA"}},
        "subscription.keys.auth": {**good, "keys": {**good["keys"], "auth": "AAAA"}},
    }
    for message, subscription in refused.items():
        ack = await first.call("push:register", {"kind": "webpush", "subscription": subscription})
        assert code(ack) == "bad_request" and ack["error"]["message"].startswith(message), ack
    assert await mongo[names.PUSH_DEVICES].count_documents({}) == 0

    url = hub.servers[0].make_url("/api/v1/push/vapid-public-key")
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert (await response.json()) == {"ok": True, "key": public}


@pytest.mark.fault
async def test_a_worker_killed_mid_send_sends_once(push_stack, mongo):
    stack, hub, fake, _ = push_stack
    doctor = await hub.connect(hub.user("dr"), "doctor")
    patient = await hub.connect(hub.user("pat"), "patient")
    await in_daytime(hub, patient)
    await patient.call(
        "push:register", {"kind": "webpush", "subscription": fake.subscribe().to_json()}
    )
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    conversation_id = opened["conversation"]["id"]
    await gone_offline(hub, patient)
    fake.delay = 4.0  # the service holds the request: the worker dies inside it
    await doctor.call(
        "message:send",
        {"conversation_id": conversation_id, "client_id": uuid.uuid4().hex, "body": "hi"},
    )
    await until(lambda: _requests_at_least(fake, 1))
    stack.workers[0].kill()
    fake.delay = 0.0
    stack.start_worker()  # the broker gives the task to it after the visibility timeout
    row = await until(lambda: _states_if(mongo, lambda found: found == ["unknown"]), timeout=40)
    assert row == ["unknown"]
    assert fake.requests == 1  # not sent again


async def _requests_at_least(fake: FakePush, count: int) -> bool:
    return fake.requests >= count


# 65 bytes of the uncompressed form, not a point of P-256: the cryptography library
# raises ValueError("Invalid EC key.") in the worker.
OFF_THE_CURVE = base64.urlsafe_b64encode(b"\x04" + b"\x01" * 64).rstrip(b"=").decode()


async def test_one_device_that_fails_never_blocks_the_others(push_stack, mongo):
    """A device with a key the encryption refuses raised ``ValueError('Invalid EC key.')``
    in the worker: the loop over the person's devices stopped, the devices after it got
    nothing, and its row stayed ``sending``."""
    stack, hub, fake, _ = push_stack
    doctor = await hub.connect(hub.user("dr"), "doctor")
    patient = await hub.connect(hub.user("pat"), "patient")
    await in_daytime(hub, patient)
    # Stored before registration was checked: a bad key, and an endpoint on loopback
    # outside the tests' push service.
    broken = fake.subscribe().to_json()
    inside = fake.subscribe().to_json()
    now = clock.now()
    for address, keys in (
        (broken["endpoint"], {**broken["keys"], "p256dh": OFF_THE_CURVE}),
        ("https://127.0.0.1:8443/admin", inside["keys"]),
    ):
        await mongo[names.PUSH_DEVICES].insert_one(
            {
                "_id": device_id("webpush", address),
                "user_id": patient.user_id,
                "kind": "webpush",
                "address": address,
                "keys": keys,
                "platform": "web",
                "locale": None,
                "created_at": now,
                "last_seen": now,
            }
        )
    alive = fake.subscribe()
    await patient.call("push:register", {"kind": "webpush", "subscription": alive.to_json()})
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    await gone_offline(hub, patient)
    await doctor.call(
        "message:send",
        {"conversation_id": opened["conversation"]["id"], "client_id": "m1", "body": "hi"},
    )
    [web] = await asyncio.to_thread(fake.wait_for, 1, SMS_TIMEOUT)
    assert web["subscription_id"] == alive.subscription_id
    rows = await until(
        lambda: _rows_if(
            mongo, lambda found: sorted(r["state"] for r in found) == ["failed", "failed", "sent"]
        )
    )
    failed = {r["device_id"]: r for r in rows if r["state"] == "failed"}
    bad_key = failed[device_id("webpush", broken["endpoint"])]
    assert bad_key["error_type"] == "ValueError" and bad_key["reason"] == "error: ValueError"
    private = failed[device_id("webpush", "https://127.0.0.1:8443/admin")]
    assert "not a public address" in private["reason"] and "error_type" not in private
    # What the worker's hub_push_errors gauge reads.
    client: MongoClient[Any] = MongoClient(stack.mongodb_url, timeoutMS=5000)
    try:
        outbox = PushOutbox(client[stack.db_name])
        assert await asyncio.to_thread(outbox.error_counts, 5000) == {"ValueError": 1}
    finally:
        client.close()


async def _rows_if(mongo: Any, ok: Any) -> list[dict[str, Any]] | None:
    found = await mongo[names.PUSH_OUTBOX].find({}).to_list(None)
    return found if ok(found) else None


async def test_a_clinic_lists_and_removes_a_persons_devices_and_old_ones_are_dropped(
    push_stack, mongo
):
    stack, hub, fake, _ = push_stack
    backend = await backend_of(hub)
    patient = await hub.connect(hub.user("pat"), "patient")
    services = hub.app()[SERVICES]
    with clock.use(clock.ManualClock(clock.now() - timedelta(days=91))):
        old = await patient.call(
            "push:register", {"kind": "fcm", "token": "old-" + uuid.uuid4().hex, "platform": "ios"}
        )
    web_id, fcm_id = await register_devices(patient, fake, "fcm-token-" + uuid.uuid4().hex)
    path = f"/api/v1/users/{patient.user_id}/devices"

    async def request(method: str, url: str, credential: str) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                method,
                hub.servers[0].make_url(url),
                headers={"Authorization": f"Bearer {credential}"},
            ) as response,
        ):
            return response.status, await response.json()

    status, body = await request("GET", path, backend.key)
    assert status == 200
    listed = {d["id"]: d for d in body["devices"]}
    assert set(listed) == {old["device"]["id"], web_id, fcm_id}
    assert all("address" not in d and "keys" not in d for d in listed.values())
    assert listed[web_id]["platform"] == "web" and listed[web_id]["last_seen"].endswith("Z")
    doctor = hub.token(hub.user("dr"), "doctor")
    assert (await request("GET", path, doctor))[0] == 403

    # A lost phone: removed by an admin, audited; twice is not found.
    admin = hub.token(hub.user("admin"), "admin")
    assert (await request("DELETE", f"{path}/{fcm_id}", admin))[0] == 200
    assert (await request("DELETE", f"{path}/{fcm_id}", admin))[0] == 404
    removed = await mongo[names.AUDIT].find_one({"action": "device.removed"})
    assert removed["device_id"] == fcm_id and removed["actor_id"] == hub.user("admin")

    # The sweep drops what was not registered again for HUB_PUSH_DEVICE_MAX_AGE_DAYS.
    max_age = timedelta(seconds=services.settings.push.device_max_age)
    assert max_age == timedelta(days=90)
    assert await services.push_devices.drop_unseen(clock.now() - max_age) == 1
    status, body = await request("GET", path, backend.key)
    assert [d["id"] for d in body["devices"]] == [web_id]
