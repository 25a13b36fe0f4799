"""The SMS fallback when MongoDB fails inside a task, and when a task is lost."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pymongo import AsyncMongoClient
from redis import Redis

from hub.core.settings import Settings
from hub.server import embedded
from hub.server.appkeys import SERVICES
from storage import names
from tests.support.fake_twilio import Planned
from tests.support.hubs import until as wait_until
from tests.support.sms import (
    SMS_TIMEOUT,
    Backend,
    log_with,
    new_phone,
    outbox,
    own_stack,
    until,
)


async def test_mongodb_stopped_during_a_task_then_back_sends_exactly_one_sms(
    tmp_path: Path, settings: Settings
):
    """No PyMongoError was caught in the tasks; with late acks Celery acknowledged the
    task that raised, so the outbox row stayed ``sending`` and the SMS never settled."""
    store = embedded.start_mongodb(tmp_path / "mongodb")
    port = int(store.url.rsplit(":", 1)[1].split("/")[0])
    try:
        async with own_stack(store, tmp_path, settings, HUB_MONGODB_TIMEOUT="1") as (stack, hub):
            await hub.start()
            stack.start_worker()
            backend = Backend(hub, await hub.app()[SERVICES].service_keys.create("backend"))
            patient, phone = hub.user("pat"), new_phone()
            await backend.put_contact(patient, phone)
            stack.twilio.then(Planned(delay=2))
            notification = await backend.appointment(patient)
            # Twilio holds the request: the task is between its claim and its record.
            assert await asyncio.to_thread(stack.twilio.received.wait, SMS_TIMEOUT)
            store.stop()
            await until(lambda: log_with(stack, "MongoDB unavailable"))
            store = embedded.start_mongodb(tmp_path / "mongodb", port=port)
            client: AsyncMongoClient = AsyncMongoClient(store.url, timeoutMS=5000)
            try:
                row = await outbox(
                    client[stack.db_name], f"notification:{notification}", "queued", "sent"
                )
            finally:
                await client.close()
            [sms] = stack.twilio.to(phone)
            assert row["sid"] == sms["sid"]
    finally:
        store.stop()


async def test_an_outbox_row_no_task_came_back_to_is_swept_and_sent_once(
    mongodb_server: embedded.ChildServer, tmp_path: Path, settings: Settings
):
    """A task lost after it opened its row (its re-enqueue failed, or the broker lost
    it): nothing would ever send that SMS."""
    async with own_stack(mongodb_server, tmp_path, settings) as (stack, hub):
        client: AsyncMongoClient = AsyncMongoClient(stack.mongodb_url, timeoutMS=5000)
        db = client[stack.db_name]
        try:
            await hub.start()  # no worker yet: the task waits in the broker
            backend = Backend(hub, await hub.app()[SERVICES].service_keys.create("backend"))
            patient, phone = hub.user("pat"), new_phone()
            await backend.put_contact(patient, phone)
            notification = await backend.appointment(patient)
            broker = Redis.from_url(stack.redis_url, socket_timeout=5)
            await wait_until(lambda: broker.llen("celery") > 0, SMS_TIMEOUT)
            broker.delete("celery")  # the broker lost it
            broker.close()
            old = datetime.now(UTC) - timedelta(hours=1)
            await db[names.SMS_OUTBOX].insert_one(
                {
                    "_id": f"notification:{notification}",
                    "user_id": patient,
                    "kind": "scheduled",
                    "state": "pending",
                    "created_at": old,
                    "attempts": 0,
                    "args": [notification],
                }
            )

            sweeping = replace(hub.settings, sms=replace(hub.settings.sms, sweep_after=1.0))
            await hub.start(sweeping)
            stack.start_worker()
            row = await outbox(db, f"notification:{notification}", "queued", "sent")
            [sms] = stack.twilio.to(phone)
            assert row["sid"] == sms["sid"]
            assert row["swept_at"]
        finally:
            await client.close()
