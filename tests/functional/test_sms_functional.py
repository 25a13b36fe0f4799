"""The SMS fallback end to end: a real hub, real Celery workers on a real Redis broker,
the real twilio client talking to a local server that follows Twilio's Messages API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pymongo import AsyncMongoClient

from channels.names import SOCKETIO_CHANNEL
from hub.core.phone import mask
from hub.core.settings import Settings
from hub.server import embedded
from hub.server.appkeys import SERVICES
from storage import names
from tests.support.fake_twilio import Planned
from tests.support.hubs import HubFixture, MakeHub
from tests.support.sms import (
    CLINIC,
    DAYTIME,
    NIGHT,
    SMS_TIMEOUT,
    START,
    Backend,
    Stack,
    log_with,
    make_stack,
    new_phone,
    outbox,
    own_stack,
    until,
    worker_logged,
)

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks


@pytest.fixture(scope="module")
def stack(
    mongodb_server: embedded.ChildServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One broker, database, fake Twilio and worker for the module's tests."""
    stack, redis = make_stack(mongodb_server, tmp_path_factory.mktemp("sms"))
    stack.start_worker()
    yield stack
    for worker in stack.workers:
        worker.stop()
    stack.twilio.stop()
    redis.stop()


@pytest.fixture
async def sms_hub(make_hub: MakeHub, stack: Stack, settings: Settings) -> HubFixture:
    fixture = await make_hub(stack.hub_settings(settings), start=False)
    fixture.channel = SOCKETIO_CHANNEL  # the workers' channel: this Redis is the module's
    await fixture.start()
    return fixture


@pytest.fixture
async def mongo(stack: Stack) -> AsyncIterator[Any]:
    client: AsyncMongoClient = AsyncMongoClient(stack.mongodb_url, timeoutMS=5000)
    yield client[stack.db_name]
    await client.close()


@pytest.fixture
async def backend(sms_hub: HubFixture) -> Backend:
    key = await sms_hub.app()[SERVICES].service_keys.create(f"backend-{uuid.uuid4().hex[:6]}")
    return Backend(sms_hub, key)


# -- sending ------------------------------------------------------------------------------


async def test_offline_patient_gets_one_sms_with_no_health_details(
    stack: Stack, backend: Backend, mongo: Any, sms_hub: HubFixture
):
    patient, phone = sms_hub.user("pat"), new_phone()
    assert (await backend.put_contact(patient, phone))[0] == 200
    notification = await backend.appointment(patient, reason="suspected melanoma, biopsy")
    row = await outbox(mongo, f"notification:{notification}", "queued", "sent")
    [sms] = stack.twilio.to(phone)
    assert row["sid"] == sms["sid"]
    local = START.astimezone(ZoneInfo(DAYTIME))
    assert sms["body"] == (
        f"{CLINIC}: you have an appointment on "
        f"{local:%a %d %b %Y} at {local:%H:%M}. Reply STOP to opt out."
    )
    assert "melanoma" not in sms["body"] and "biopsy" not in sms["body"]
    assert sms["from"] == "+14155550000"
    assert sms["status_callback"] == "https://hub.clinic.test/webhooks/twilio/status"
    # The worker's log names the recipient masked, never in full.
    worker_log = await until(lambda: log_with(stack, row["sid"]))
    assert mask(phone) in worker_log and phone not in worker_log


async def test_recipient_who_acks_in_time_gets_none(
    stack: Stack, backend: Backend, mongo: Any, sms_hub: HubFixture
):
    patient = await sms_hub.connect(sms_hub.user("pat"), "patient")
    phone = new_phone()
    await backend.put_contact(patient.user_id, phone)
    notification = await backend.appointment(patient.user_id)
    new = await patient.wait_for("notification:new")
    assert (await patient.call("notification:ack", {"ids": [new["notification"]["id"]]}))["ok"]
    row = await outbox(mongo, f"notification:{notification}", "skipped", "queued")
    assert (row["state"], row["reason"]) == ("skipped", "acked")
    assert stack.twilio.to(phone) == []


async def test_connected_recipient_who_does_not_ack_gets_sms_and_a_push(
    stack: Stack, backend: Backend, mongo: Any, sms_hub: HubFixture
):
    patient = await sms_hub.connect(sms_hub.user("pat"), "patient")
    phone = new_phone()
    await backend.put_contact(patient.user_id, phone)
    notification = await backend.appointment(patient.user_id, "confirmed")
    await patient.wait_for("notification:new")
    # The worker pushes through Redis (a write-only manager) once the SMS is out.
    pushed = await patient.wait_for("notification:sms", timeout=SMS_TIMEOUT)
    assert pushed == {"cause": f"notification:{notification}"}
    [sms] = stack.twilio.to(phone)
    assert "is confirmed" in sms["body"]


async def test_server_errors_and_429_are_retried_then_sent_once(
    stack: Stack, backend: Backend, mongo: Any, sms_hub: HubFixture
):
    patient, phone = sms_hub.user("pat"), new_phone()
    await backend.put_contact(patient, phone)
    requests = stack.twilio.requests
    stack.twilio.then(Planned(500, 20500), Planned(429, 20429))
    notification = await backend.appointment(patient)
    row = await outbox(mongo, f"notification:{notification}", "queued", "failed")
    assert row["state"] == "queued"
    assert len(stack.twilio.to(phone)) == 1
    assert stack.twilio.requests - requests == 3
    assert row["attempts"] == 3


async def test_unsubscribed_21610_opts_out_and_21211_marks_the_number(
    stack: Stack, backend: Backend, mongo: Any, sms_hub: HubFixture
):
    patient, phone = sms_hub.user("pat"), new_phone()
    await backend.put_contact(patient, phone)
    stack.twilio.then(Planned(400, 21610))
    first = await backend.appointment(patient)
    row = await outbox(mongo, f"notification:{first}", "failed")
    assert row["error_code"] == 21610
    assert await mongo[names.SMS_STOPS].find_one({"_id": phone}) is not None
    second = await backend.appointment(patient)
    row = await outbox(mongo, f"notification:{second}", "skipped")
    assert row["reason"] == "opted out"

    other, bad_phone = sms_hub.user("pat2"), new_phone()
    await backend.put_contact(other, bad_phone)
    stack.twilio.then(Planned(400, 21211))
    third = await backend.appointment(other)
    assert (await outbox(mongo, f"notification:{third}", "failed"))["error_code"] == 21211
    contact = await mongo[names.CONTACTS].find_one({"_id": other})
    assert contact["invalid_phone"] == bad_phone
    # Exactly one request each: a 4xx is not retried.
    assert stack.twilio.to(phone) == [] and stack.twilio.to(bad_phone) == []


async def test_quiet_hours_defer_to_their_end_instead_of_dropping(
    stack: Stack, backend: Backend, mongo: Any, sms_hub: HubFixture
):
    patient, phone = sms_hub.user("pat"), new_phone()
    await backend.put_contact(patient, phone, timezone=NIGHT)
    notification = await backend.appointment(patient)
    row = await outbox(mongo, f"notification:{notification}", "deferred")
    local_end = row["deferred_until"].replace(tzinfo=UTC).astimezone(ZoneInfo(NIGHT))
    assert (local_end.hour, local_end.minute) == (8, 0)
    assert timedelta(0) < local_end - datetime.now(UTC) <= timedelta(hours=8)
    assert stack.twilio.to(phone) == []


async def test_daily_cap_and_test_numbers(
    stack: Stack, backend: Backend, mongo: Any, sms_hub: HubFixture
):
    patient, phone = sms_hub.user("pat"), new_phone()
    await backend.put_contact(patient, phone)
    ids = [await backend.appointment(patient) for _ in range(4)]
    rows = [await outbox(mongo, f"notification:{i}", "queued", "skipped") for i in ids]
    assert sorted(row["state"] for row in rows) == ["queued", "queued", "queued", "skipped"]
    assert [row["reason"] for row in rows if row["state"] == "skipped"] == ["daily cap"]
    assert len(stack.twilio.to(phone)) == 3

    fictional = sms_hub.user("pat-test")
    await backend.put_contact(fictional, "+15555550123")
    row = await outbox(mongo, f"notification:{await backend.appointment(fictional)}", "skipped")
    assert row["reason"] == "test number"


async def test_chat_messages_to_an_offline_member_coalesce_into_one_sms(
    stack: Stack, backend: Backend, mongo: Any, sms_hub: HubFixture
):
    doctor = await sms_hub.connect(sms_hub.user("doc"), "doctor")
    patient, phone = sms_hub.user("pat"), new_phone()
    await backend.put_contact(patient, phone)
    opened = await doctor.call("conversation:open", {"member_ids": [patient]})
    conversation_id = opened["conversation"]["id"]
    for n in range(3):
        sent = await doctor.call(
            "message:send",
            {
                "conversation_id": conversation_id,
                "client_id": f"m{n}",
                "body": f"Your HbA1c came back at 9.{n}%",
            },
        )
        assert sent["ok"]
    rows = [
        await outbox(mongo, f"message:{conversation_id}:{patient}:{seq}", "queued", "skipped")
        for seq in (1, 2, 3)
    ]
    assert sorted(row["state"] for row in rows) == ["queued", "skipped", "skipped"]
    [sms] = stack.twilio.to(phone)
    assert sms["body"] == (
        f"{CLINIC}: you have a new message. Open the app to read it. Reply STOP to opt out."
    )


# -- webhooks -----------------------------------------------------------------------------


async def test_stop_and_start_and_help_and_plain_requests(
    stack: Stack,
    backend: Backend,
    mongo: Any,
    sms_hub: HubFixture,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level("DEBUG")
    patient, phone = sms_hub.user("pat"), new_phone()
    await backend.put_contact(patient, phone)
    inbound = "/webhooks/twilio/inbound"
    assert (await backend.twilio_post(inbound, {"From": phone, "Body": " stop "}))[0] == 200
    row = await outbox(mongo, f"notification:{await backend.appointment(patient)}", "skipped")
    assert row["reason"] == "opted out"
    # A back-end saying "opted in" does not lift a STOP; only the recipient does.
    await backend.put_contact(patient, phone, opt_in=True)
    assert await mongo[names.SMS_STOPS].find_one({"_id": phone}) is not None

    assert (await backend.twilio_post(inbound, {"From": phone, "Body": "START"}))[0] == 200
    row = await outbox(mongo, f"notification:{await backend.appointment(patient)}", "queued")
    assert len(stack.twilio.to(phone)) == 1

    status, twiml = await backend.twilio_post(
        inbound, {"From": phone, "Body": "Please stop texting me, my chest pain is better"}
    )
    assert status == 200 and "START" in twiml and "chest" not in twiml
    assert await mongo[names.SMS_STOPS].find_one({"_id": phone}) is not None
    status, twiml = await backend.twilio_post(inbound, {"From": phone, "Body": "HELP"})
    assert status == 200 and CLINIC in twiml and "STOP" in twiml
    # Inbound texts and full numbers stay out of the hub's log at every level.
    hub_log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("hub"))
    assert "inbound sms from=" in hub_log
    assert "chest" not in hub_log and phone not in hub_log


async def test_status_callbacks_only_move_forward(
    stack: Stack, backend: Backend, mongo: Any, sms_hub: HubFixture
):
    patient, phone = sms_hub.user("pat"), new_phone()
    await backend.put_contact(patient, phone)
    notification = await backend.appointment(patient)
    row = await outbox(mongo, f"notification:{notification}", "queued")
    status_path = "/webhooks/twilio/status"
    for state in ("delivered", "sent"):  # Twilio does not promise callback order
        form = {"MessageSid": row["sid"], "MessageStatus": state, "To": phone}
        assert (await backend.twilio_post(status_path, form))[0] == 204
    row = await mongo[names.SMS_OUTBOX].find_one({"_id": f"notification:{notification}"})
    assert row["state"] == "delivered"


async def test_webhooks_refuse_bad_or_missing_signatures(backend: Backend):
    form = {"MessageSid": "SM0", "MessageStatus": "delivered"}
    assert (await backend.twilio_post("/webhooks/twilio/status", form, "bad"))[0] == 403
    assert (await backend.twilio_post("/webhooks/twilio/status", form, ""))[0] == 403
    inbound = {"From": "+14155550100", "Body": "STOP"}
    assert (await backend.twilio_post("/webhooks/twilio/inbound", inbound, "bad"))[0] == 403


async def test_contact_route_validates_and_needs_a_key(backend: Backend, sms_hub: HubFixture):
    user = sms_hub.user("pat")
    assert (await backend.put_contact(user, "0612345678"))[0] == 400
    assert (await backend.put_contact(user, "+14155550100", timezone="Mars/Olympus"))[0] == 400
    assert (await backend.put_contact(user, "+14155550100", key="hubk.x.y"))[0] == 401
    status, body = await backend.put_contact(user, "+14155550100", timezone="Europe/Paris")
    assert status == 200 and body["contact"]["timezone"] == "Europe/Paris"


# -- a worker that dies -------------------------------------------------------------------


async def test_worker_killed_mid_send_sends_once(
    mongodb_server: embedded.ChildServer, tmp_path: Path, settings: Settings
):
    """The worker dies after Twilio accepted the SMS but before it heard back: the
    message is redelivered to another worker, which must find the SMS, not resend it."""
    async with own_stack(mongodb_server, tmp_path, settings) as (stack, hub):
        await hub.start()
        dying = stack.start_worker()
        key = await hub.app()[SERVICES].service_keys.create("backend")
        backend = Backend(hub, key)
        patient, phone = hub.user("pat"), new_phone()
        await backend.put_contact(patient, phone)
        stack.twilio.then(Planned(delay=30))
        notification = await backend.appointment(patient)
        assert await asyncio.to_thread(stack.twilio.received.wait, SMS_TIMEOUT)
        dying.kill()
        survivor = stack.start_worker()
        client: AsyncMongoClient = AsyncMongoClient(stack.mongodb_url, timeoutMS=5000)
        try:
            row = await outbox(
                client[stack.db_name], f"notification:{notification}", "queued", "sent"
            )
        finally:
            await client.close()
        assert len(stack.twilio.to(phone)) == 1
        assert row["sid"] == stack.twilio.to(phone)[0]["sid"]
        # It was the survivor that settled it, by asking Twilio rather than resending.
        await until(lambda: worker_logged(survivor, "had been sent before its worker stopped"))


async def test_without_twilio_credentials_sms_are_recorded_and_logged_not_sent(
    mongodb_server: embedded.ChildServer, tmp_path: Path, settings: Settings
):
    async with own_stack(
        mongodb_server, tmp_path, settings, TWILIO_ACCOUNT_SID="", TWILIO_AUTH_TOKEN=""
    ) as (stack, hub):
        await hub.start()
        worker = stack.start_worker()
        backend = Backend(hub, await hub.app()[SERVICES].service_keys.create("backend"))
        patient, phone = hub.user("pat"), new_phone()
        await backend.put_contact(patient, phone)
        notification = await backend.appointment(patient)
        client: AsyncMongoClient = AsyncMongoClient(stack.mongodb_url, timeoutMS=5000)
        try:
            row = await outbox(client[stack.db_name], f"notification:{notification}", "sent")
        finally:
            await client.close()
        assert row["sid"].startswith("LOG")
        assert stack.twilio.messages == []
        log = await until(lambda: log_with(stack, "sms not sent (log driver)"))
        assert "nothing is really sent" in log
        assert mask(phone) in log and phone not in log
        assert worker.process.poll() is None
