"""Office hours against a real hub: set by a back-end, one automatic reply per closed
period and conversation, none while open, none to the clinic's own messages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import aiohttp
import jwt
import pytest

from hub.server.appkeys import SERVICES
from tests.support.chat import open_pair, send
from tests.support.hubs import TIMEOUT, HubFixture

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks

ZONE = "America/New_York"
EVERY_DAY = {day: [["00:00", "24:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


async def put_hours(hub: HubFixture, body: dict) -> tuple[int, dict]:
    key = await hub.app()[SERVICES].service_keys.create(f"backend-{uuid.uuid4().hex[:6]}")
    url = hub.servers[0].make_url("/api/v1/clinic/hours")
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.put(url, json=body, headers={"Authorization": f"Bearer {key}"}) as response,
    ):
        return response.status, await response.json()


async def test_a_patient_writing_while_closed_gets_one_reply_per_closed_period(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    today = datetime.now(UTC).astimezone(ZoneInfo(ZONE)).date().isoformat()
    status, answer = await put_hours(
        hub,
        {"timezone": ZONE, "weekly": EVERY_DAY, "holidays": [today], "response_time": "one day"},
    )
    assert status == 200 and answer["hours"]["holidays"] == [today]

    first = await send(patient, conversation_id, "Is my prescription ready?")
    reply = await patient.wait_for(
        "message:new", lambda d: d["message"]["sender_id"] == "system:clinic"
    )
    text = reply["message"]["body"]
    assert text.startswith("We are closed until ") and "0:00" in text
    assert "We answer within one day." in text and "emergency, call 911" in text
    assert reply["message"]["seq"] == first["message"]["seq"] + 1
    await doctor.wait_for("message:new", lambda d: d["message"]["sender_id"] == "system:clinic")

    second = await send(patient, conversation_id, "Hello?")
    from_doctor = await send(doctor, conversation_id, "I'm here")
    assert second["ok"] and from_doctor["ok"]
    history = await patient.call("message:history", {"conversation_id": conversation_id})
    senders = [m["sender_id"] for m in history["messages"]]
    assert senders == [patient.user_id, "system:clinic", patient.user_id, doctor.user_id]

    # Open every day: no reply.
    status, _ = await put_hours(hub, {"timezone": ZONE, "weekly": EVERY_DAY})
    assert status == 200
    await send(patient, conversation_id, "Thanks")
    history = await patient.call("message:history", {"conversation_id": conversation_id})
    assert [m["sender_id"] for m in history["messages"]].count("system:clinic") == 1


async def test_hours_are_refused_without_a_key_or_with_bad_fields(hub: HubFixture):
    url = hub.servers[0].make_url("/api/v1/clinic/hours")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
        async with http.put(url, json={"timezone": ZONE}) as response:
            assert response.status == 401
        patient = hub.token(hub.user("pat"), "patient")
        async with http.get(url, headers={"Authorization": f"Bearer {patient}"}) as response:
            assert response.status == 404  # none set: always open
    status, answer = await put_hours(hub, {"timezone": ZONE, "weekly": {"mon": [["9", "5"]]}})
    assert status == 400 and "weekly.mon" in answer["error"]["message"]


async def test_no_token_may_speak_as_the_clinic(hub: HubFixture):
    token = jwt.encode(
        {"sub": "system:clinic", "role": "doctor", "exp": int(datetime.now(UTC).timestamp()) + 60},
        hub.settings.jwt_secret,
        "HS256",
    )
    url = hub.servers[0].make_url("/api/v1/conversations/c1/messages")
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        assert response.status == 401
        assert "system:" in (await response.json())["error"]["message"]


async def test_one_reply_per_closed_period_across_the_change_to_winter_time(hub: HubFixture):
    """Paris, weekend of 24-25 October 2026, when the clocks go back: messages on
    Friday night, Saturday and Sunday (after the change) get one reply, which says
    Monday 8:00; a message on Monday evening starts a new period."""
    services = hub.app()[SERVICES]
    doctor, patient, conversation_id = await open_pair(hub)
    weekdays = {d: [["08:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
    status, _ = await put_hours(hub, {"timezone": "Europe/Paris", "weekly": weekdays})
    assert status == 200
    conversation = await services.conversations.get(conversation_id)
    paris = ZoneInfo("Europe/Paris")
    replies = []
    for moment in (
        datetime(2026, 10, 23, 19, 0, tzinfo=paris),  # Friday, CEST
        datetime(2026, 10, 24, 11, 0, tzinfo=paris),  # Saturday
        datetime(2026, 10, 25, 22, 0, tzinfo=paris),  # Sunday, CET since 03:00
        datetime(2026, 10, 26, 19, 0, tzinfo=paris),  # Monday after closing
    ):
        replies.append(await services.closed_replies.after_patient_message(conversation, moment))
    first, saturday, sunday, monday = replies
    assert first is not None and saturday is None and sunday is None
    assert "until Monday 8:00" in first.body
    assert monday is not None and "until Tuesday 8:00" in monday.body
    # The period is named by its end, in UTC: Monday 07:00Z (08:00 CET), not 06:00Z.
    assert first.client_id == "closed-until:2026-10-26T07:00:00+00:00"
