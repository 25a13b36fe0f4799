"""Urgent patient messages end to end: the notice at once, the inbox's order, and an
SMS page to the on-call nurse through quiet hours (a real hub, Celery worker, Redis
broker and the local Twilio)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from channels.names import SOCKETIO_CHANNEL
from hub.core.settings import Settings
from hub.server import embedded
from hub.server.appkeys import SERVICES
from storage import names
from storage.pools import shift
from tests.support.sms import NIGHT, Backend, new_phone, outbox, own_stack, until

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks


async def test_an_urgent_message_notifies_pages_on_call_and_tops_the_inbox(
    mongodb_server: embedded.ChildServer, tmp_path: Path, settings: Settings
):
    async with own_stack(mongodb_server, tmp_path, settings) as (stack, hub):
        hub.channel = SOCKETIO_CHANNEL
        stack.start_worker()
        await hub.start()
        services = hub.app()[SERVICES]
        lead, on_call = hub.user("rn-lead"), hub.user("rn-night")
        patient_id, other_id = hub.user("pat"), hub.user("pat-other")
        for user_id, name, role in (
            (lead, "Rosa Alvarez", "nurse"),
            (on_call, "Ben Okafor", "nurse"),
            (patient_id, "Jane Roe", "patient"),
            (other_id, "John Doe", "patient"),
        ):
            await services.directory.put(user_id, name, role, None)
        now = datetime.now(UTC)
        pool = f"triage-{hub.prefix}"
        await services.pools.put(
            pool,
            "Triage",
            [lead, on_call],
            lead,
            60,
            [shift(on_call, now - timedelta(hours=1), now + timedelta(hours=1))],
        )
        key = await services.service_keys.create("backend")
        backend = Backend(hub, key)
        phone = new_phone()
        await backend.put_contact(on_call, phone, timezone=NIGHT)  # it is night there

        nurse = await hub.connect(lead, "nurse")
        other = await hub.connect(other_id, "patient")
        earlier = await other.call("conversation:open", {"pool_id": pool})
        await other.call(
            "message:send",
            {
                "conversation_id": earlier["conversation"]["id"],
                "client_id": "o1",
                "body": "Refill?",
            },
        )
        patient = await hub.connect(patient_id, "patient")
        opened = await patient.call("conversation:open", {"pool_id": pool})
        conversation_id = opened["conversation"]["id"]
        payload = {
            "conversation_id": conversation_id,
            "client_id": "u1",
            "body": "I have CHEST PAIN and I can\u2019t breathe",
        }
        sent = await patient.call("message:send", payload)
        assert sent["ok"] and sent["message"]["urgent"] is True
        notice = await patient.wait_for(
            "message:new", lambda d: d["message"]["sender_id"] == "system:clinic"
        )
        assert notice["message"]["body"].startswith("If this is an emergency, call 911 now.")

        row = await outbox(
            services.db,
            f"page:{conversation_id}:{sent['message']['seq']}:{on_call}",
            "queued",
            "sent",
        )
        [sms] = stack.twilio.to(phone)
        assert "URGENT" in sms["body"] and "chest" not in sms["body"].lower()
        assert row["user_id"] == on_call

        listed = await nurse.call("inbox:list", {"pool_id": pool, "state": "all"})
        order = [c["conversation_id"] for c in listed["conversations"]]
        assert order[0] == conversation_id and listed["conversations"][0]["urgent"] is True
        assert earlier["conversation"]["id"] in order

        # A resend of the same message pages and notifies nobody again.
        again = await patient.call("message:send", payload)
        assert again["message"]["seq"] == sent["message"]["seq"]
        history = await patient.call("message:history", {"conversation_id": conversation_id})
        notices = [m for m in history["messages"] if m["sender_id"] == "system:clinic"]
        assert len(notices) == 1
        pages = await services.db[names.SMS_OUTBOX].count_documents({"kind": "page"})
        assert pages == 1
        audit = await until(lambda: services.db[names.AUDIT].find_one({"action": "message.urgent"}))
        assert audit["detail"]["paged"] == [on_call]
