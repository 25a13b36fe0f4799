"""The response-time promise against a real hub: a patient left waiting past the
pool's limit is escalated to the lead, then at twice the limit to the admins; not
before, not twice, and only business hours count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.core.office_hours import parse_hours
from hub.server.appkeys import SERVICES
from storage import names
from tests.support.hubs import HubFixture

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks

WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


async def waiting_conversation(hub: HubFixture, limit_minutes: int) -> tuple[str, str, str]:
    services = hub.app()[SERVICES]
    lead, admin, patient_id = hub.user("lead"), hub.user("admin"), hub.user("pat")
    await services.directory.put(lead, "Rosa Alvarez", "nurse", "RN")
    await services.directory.put(admin, "Clinic Admin", "admin", None)
    await services.directory.put(patient_id, "Jane Roe", "patient", None)
    pool = f"triage-{hub.prefix}"
    await services.pools.put(pool, "Nurse triage", [lead], lead, limit_minutes)
    patient = await hub.connect(patient_id, "patient")
    opened = await patient.call("conversation:open", {"pool_id": pool})
    conversation_id = opened["conversation"]["id"]
    sent = await patient.call(
        "message:send",
        {"conversation_id": conversation_id, "client_id": "m1", "body": "Any news?"},
    )
    assert sent["ok"]
    return conversation_id, lead, admin


async def test_a_waiting_patient_is_escalated_to_the_lead_then_the_admins(hub: HubFixture):
    services = hub.app()[SERVICES]
    conversation_id, lead, admin = await waiting_conversation(hub, limit_minutes=60)
    lead_socket = await hub.connect(lead, "nurse")
    admin_socket = await hub.connect(admin, "admin")
    route = await services.db[names.INBOX].find_one({"_id": conversation_id})
    since = route["waiting_since"].replace(tzinfo=UTC)
    escalations = services.escalations

    assert await escalations.run_once(since + timedelta(minutes=59)) == 0  # not before
    assert await escalations.run_once(since + timedelta(minutes=61)) == 1
    got = await lead_socket.wait_for("notification:new")
    assert got["notification"]["type"] == "inbox.escalated"
    assert got["notification"]["conversation"]["id"] == conversation_id
    assert "Any news" not in str(got)  # the notification names the conversation, not the text
    assert await escalations.run_once(since + timedelta(minutes=90)) == 0  # not twice
    assert await escalations.run_once(since + timedelta(minutes=121)) == 1
    to_admin = await admin_socket.wait_for("notification:new")
    assert to_admin["notification"]["conversation"]["level"] == 2
    listed = await lead_socket.call("notification:list", {})
    assert [n["type"] for n in listed["notifications"]] == ["inbox.escalated"]

    # An answer ends the waiting period: no more escalations.
    owner = await lead_socket.call("conversation:claim", {"conversation_id": conversation_id})
    assert owner["ok"]
    await lead_socket.call(
        "message:send",
        {"conversation_id": conversation_id, "client_id": "a1", "body": "Looking now"},
    )
    assert await escalations.run_once(since + timedelta(hours=10)) == 0
    histogram = services.metrics.registry.get_sample_value(
        "hub_inbox_first_response_seconds_count", {"pool": f"triage-{hub.prefix}"}
    )
    assert histogram == 1  # time to first response, per pool
    audit = await services.db[names.AUDIT].find({"action": "conversation.escalated"}).to_list(None)
    assert [a["detail"]["level"] for a in audit] == [1, 2]


async def test_only_business_hours_count(hub: HubFixture):
    services = hub.app()[SERVICES]
    conversation_id, _, _ = await waiting_conversation(hub, limit_minutes=60)
    route = await services.db[names.INBOX].find_one({"_id": conversation_id})
    since = route["waiting_since"].replace(tzinfo=UTC)
    # Open only on the day after tomorrow: the next 24 hours are all closed.
    later = (since + timedelta(days=2)).strftime("%a").lower()
    await services.clinic.put_hours(
        parse_hours({"timezone": "UTC", "weekly": {later: [["00:00", "24:00"]]}})
    )
    assert later in WEEK
    assert await services.escalations.run_once(since + timedelta(hours=20)) == 0
    opening = datetime.combine((since + timedelta(days=2)).date(), datetime.min.time(), UTC)
    assert await services.escalations.run_once(opening + timedelta(minutes=61)) == 1
