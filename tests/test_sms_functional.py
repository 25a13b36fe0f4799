"""The SMS fallback end to end: a real hub, real Celery workers on a real Redis broker,
the real twilio client talking to a local server that follows Twilio's Messages API."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from pymongo import AsyncMongoClient
from twilio.request_validator import RequestValidator

from channels.names import SOCKETIO_CHANNEL
from hub.core.phone import mask
from hub.core.settings import Settings
from hub.server import embedded
from hub.server.appkeys import SERVICES
from storage import names
from tests.conftest import JWT_SECRET, TIMEOUT, HubFixture
from tests.fake_twilio import FakeTwilio, Planned

ROOT = Path(__file__).resolve().parent.parent
START = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
CLINIC = "Riverside Clinic"
SMS_TIMEOUT = 20.0


def zone_where_hour(hours: range) -> str:
    """A fixed-offset zone whose local hour now is in ``hours`` (quiet or not)."""
    now = datetime.now(UTC)
    for offset in range(-12, 15):
        name = f"Etc/GMT{'+' if offset <= 0 else '-'}{abs(offset)}"  # POSIX signs are inverted
        if now.astimezone(ZoneInfo(name)).hour in hours:
            return name
    raise AssertionError("no zone found")


DAYTIME = zone_where_hour(range(10, 18))
NIGHT = zone_where_hour(range(0, 6))


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes: a machine that dies mid-task."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(TIMEOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Stack:
    mongodb_url: str
    redis_url: str
    db_name: str
    twilio: FakeTwilio
    tmp: Path
    workers: list[Worker]
    overrides: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "HUB_EMBEDDED": "0",
            "HUB_JWT_SECRET": JWT_SECRET,
            "HUB_MONGODB_URL": self.mongodb_url,
            "HUB_MONGODB_DB": self.db_name,
            "HUB_REDIS_URL": self.redis_url,
            "HUB_CLINIC_NAME": CLINIC,
            "HUB_PUBLIC_URL": "https://hub.clinic.test",
            "TWILIO_ACCOUNT_SID": self.twilio.account_sid,
            "TWILIO_AUTH_TOKEN": self.twilio.auth_token,
            "TWILIO_FROM_NUMBER": "+14155550000",
            "HUB_TWILIO_BASE_URL": self.twilio.url,
            "HUB_TWILIO_TIMEOUT": "3",
            "HUB_SMS_RETRY_BASE": "0.2",
            "HUB_CELERY_VISIBILITY_TIMEOUT": "3",
            "HUB_LOG_LEVEL": "INFO",
        }
        return {**env, **self.overrides}

    def start_worker(self) -> Worker:
        log_path = self.tmp / f"worker-{len(self.workers)}.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "hub", "worker"],
                cwd=ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(process, log_path)
        self.workers.append(worker)
        return worker

    def hub_settings(self, settings: Settings) -> Settings:
        return replace(
            Settings.from_env(self.env()),
            host=settings.host,
            port=settings.port,
            data_dir=settings.data_dir,
            rate_conn=settings.rate_conn,
            rate_user=settings.rate_user,
            sms=replace(Settings.from_env(self.env()).sms, fallback_after=1.0),
        )


@asynccontextmanager
async def own_stack(
    mongodb_server: embedded.ChildServer, tmp: Path, settings: Settings, **overrides: str
) -> AsyncIterator[tuple[Stack, HubFixture]]:
    """A broker, fake Twilio and hub of the test's own (not started: the test says
    when), stopped with every worker the test started."""
    stack, redis = make_stack(mongodb_server, tmp)
    stack.overrides = overrides
    hub = HubFixture(stack.hub_settings(settings))
    try:
        yield stack, hub
    finally:
        await hub.close()
        for worker in stack.workers:
            worker.stop()
        stack.twilio.stop()
        redis.stop()


def make_stack(mongodb_server: embedded.ChildServer, tmp: Path) -> tuple[Stack, Any]:
    redis = embedded.start_redis(tmp / "redis")
    twilio = FakeTwilio().start()
    stack = Stack(mongodb_server.url, redis.url, f"sms_{uuid.uuid4().hex[:10]}", twilio, tmp, [])
    return stack, redis


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
async def sms_hub(stack: Stack, settings: Settings) -> AsyncIterator[HubFixture]:
    fixture = HubFixture(stack.hub_settings(settings))
    fixture.channel = SOCKETIO_CHANNEL  # the workers' channel: this Redis is the module's
    await fixture.start()
    yield fixture
    await fixture.close()


@pytest.fixture
async def mongo(stack: Stack) -> AsyncIterator[Any]:
    client: AsyncMongoClient = AsyncMongoClient(stack.mongodb_url, timeoutMS=5000)
    yield client[stack.db_name]
    await client.close()


async def until(check: Callable[[], Awaitable[Any]], timeout: float = SMS_TIMEOUT) -> Any:
    """Wait until ``check()`` returns something truthy; fail after ``timeout``."""

    async def poll() -> Any:
        while not (result := await check()):
            await asyncio.sleep(0.05)
        return result

    return await asyncio.wait_for(poll(), timeout)


class Backend:
    """What a clinic back-end does over HTTP: contacts and appointment events."""

    def __init__(self, hub: HubFixture, key: str) -> None:
        self.hub, self.key = hub, key
        self.url = str(hub.servers[0].make_url("/")).rstrip("/")

    async def put_contact(
        self,
        user_id: str,
        phone: str,
        timezone: str = DAYTIME,
        opt_in: bool = True,
        key: str | None = None,
    ) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.put(
                f"{self.url}/api/v1/users/{user_id}/contact",
                json={"phone": phone, "timezone": timezone, "sms_opt_in": opt_in},
                headers={"Authorization": f"Bearer {key or self.key}"},
            ) as response,
        ):
            return response.status, await response.json()

    async def appointment(
        self,
        patient_id: str,
        status: str = "scheduled",
        *,
        appointment_id: str | None = None,
        doctor_id: str = "dr-sms",
        minutes: int = 0,
        **extra: Any,
    ) -> str:
        appointment_id = appointment_id or f"apt-{uuid.uuid4().hex[:8]}"
        event = {
            "event_id": uuid.uuid4().hex,
            "appointment_id": appointment_id,
            "doctor_id": doctor_id,
            "patient_id": patient_id,
            "status": status,
            "start": START.isoformat(),
            "occurred_at": (
                datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=minutes)
            ).isoformat(),
            **extra,
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.url}/api/v1/events/appointments",
                json=event,
                headers={"Authorization": f"Bearer {self.key}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
        return f"{event['event_id']}:{patient_id}"

    async def twilio_post(
        self, path: str, form: dict[str, str], signature: str | None = None
    ) -> tuple[int, str]:
        """POST as Twilio does, signed against HUB_PUBLIC_URL unless told otherwise."""
        settings = self.hub.settings
        if signature is None:
            signature = RequestValidator(settings.sms.twilio_auth_token).compute_signature(
                settings.public_base_url + path, form
            )
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                self.url + path, data=form, headers={"X-Twilio-Signature": signature}
            ) as response,
        ):
            return response.status, await response.text()


@pytest.fixture
async def backend(sms_hub: HubFixture) -> Backend:
    key = await sms_hub.app()[SERVICES].service_keys.create(f"backend-{uuid.uuid4().hex[:6]}")
    return Backend(sms_hub, key)


def new_phone() -> str:
    return f"+1415{uuid.uuid4().int % 10**7:07d}"


async def outbox(mongo: Any, outbox_id: str, *states: str) -> dict[str, Any]:
    """The outbox row once it is in one of ``states``."""
    return await until(
        lambda: mongo[names.SMS_OUTBOX].find_one({"_id": outbox_id, "state": {"$in": list(states)}})
    )


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
    worker_log = await until(lambda: _log_with(stack, row["sid"]))
    assert mask(phone) in worker_log and phone not in worker_log


async def _in(worker: Worker, text: str) -> bool:
    return text in worker.log()


async def _log_with(stack: Stack, text: str) -> str | None:
    log = "".join(worker.log() for worker in stack.workers)
    return log if text in log else None


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
        await until(lambda: _in(survivor, "had been sent before its worker stopped"))


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
        log = await until(lambda: _log_with(stack, "sms not sent (log driver)"))
        assert "nothing is really sent" in log
        assert mask(phone) in log and phone not in log
        assert worker.process.poll() is None
