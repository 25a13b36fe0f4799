"""Names in the hub: from the clinic's back-end, or until then from the token."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import jwt
import pytest

from hub.server.appkeys import SERVICES
from tests.support.chat import code
from tests.support.hubs import TIMEOUT, Client, HubFixture

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks


def named_token(hub: HubFixture, user_id: str, role: str, name: str) -> str:
    claims = {"sub": user_id, "role": role, "name": name, "exp": int(time.time()) + 600}
    return jwt.encode(claims, hub.settings.jwt_secret, "HS256")


async def put_user(
    hub: HubFixture, user_id: str, body: dict, key: str | None = None
) -> tuple[int, dict]:
    key = key or await hub.app()[SERVICES].service_keys.create(f"backend-{uuid.uuid4().hex[:6]}")
    url = hub.servers[0].make_url(f"/api/v1/users/{user_id}")
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.put(url, json=body, headers={"Authorization": f"Bearer {key}"}) as response,
    ):
        return response.status, await response.json()


async def connect_named(hub: HubFixture, name: str, role: str, label: str) -> Client:
    user_id = hub.user(label)
    client = await hub.connect(user_id, role, token=named_token(hub, user_id, role, name))
    directory = hub.app()[SERVICES].directory

    async def known() -> bool:
        directory._cache.pop(user_id, None)  # read the store, not this process's copy
        return (await directory.people([user_id]))[user_id]["name"] == name

    deadline = time.monotonic() + TIMEOUT
    while not await known():  # polled under a deadline, as tests.support.hubs.until does
        assert time.monotonic() < deadline, f"{name} never reached the directory"
        await asyncio.sleep(0.02)
    return client


async def test_names_come_from_tokens_then_from_the_back_end(hub: HubFixture):
    nurse = await connect_named(hub, "Rosa Alvarez", "nurse", "nurse")
    patient = await connect_named(hub, "Jane Roe", "patient", "pat")
    opened = await nurse.call("conversation:open", {"member_ids": [patient.user_id]})
    assert opened["ok"], opened
    members = {m["id"]: m for m in opened["conversation"]["members"]}
    assert members[nurse.user_id] == {"id": nurse.user_id, "name": "Rosa Alvarez", "role": "nurse"}
    assert members[patient.user_id]["name"] == "Jane Roe"
    conversation_id = opened["conversation"]["id"]

    sent = await nurse.call(
        "message:send",
        {"conversation_id": conversation_id, "client_id": uuid.uuid4().hex, "body": "Hello"},
    )
    assert sent["message"]["sender_name"] == "Rosa Alvarez"
    new = await patient.wait_for("message:new")
    assert new["message"]["sender_name"] == "Rosa Alvarez"
    await nurse.call("typing", {"conversation_id": conversation_id, "typing": True})
    typing = await patient.wait_for("typing")
    assert typing["name"] == "Rosa Alvarez"

    # The back-end's record wins, and a later token does not change it.
    status, answer = await put_user(
        hub,
        nurse.user_id,
        {"name": "Rosa Álvarez", "role": "nurse", "title": "RN"},
    )
    assert status == 200 and answer["user"]["title"] == "RN"
    await nurse.close()
    again = await hub.connect(
        nurse.user_id, "nurse", token=named_token(hub, nurse.user_id, "nurse", "Someone Else")
    )
    listed = await patient.call("conversation:list", {})
    [conversation] = listed["conversations"]
    shown = {m["id"]: m for m in conversation["members"]}[nurse.user_id]
    assert shown == {"id": nurse.user_id, "name": "Rosa Álvarez", "role": "nurse", "title": "RN"}
    assert again.sio.connected
    # History keeps the name a message was sent under.
    history = await patient.call("message:history", {"conversation_id": conversation_id})
    assert history["messages"][0]["sender_name"] == "Rosa Alvarez"


async def test_unknown_people_are_shown_by_id_and_bad_entries_refused(hub: HubFixture):
    doctor = await hub.connect(hub.user("dr"), "doctor")  # a token without a name
    opened = await doctor.call("conversation:open", {"member_ids": [hub.user("nobody")]})
    names = {m["id"]: m["name"] for m in opened["conversation"]["members"]}
    assert names[hub.user("nobody")] == hub.user("nobody")
    status, answer = await put_user(hub, "u1", {"name": "X", "role": "superuser"})
    assert status == 400 and answer["error"]["code"] == "bad_request"
    status, answer = await put_user(hub, "u1", {"name": "", "role": "doctor"})
    assert status == 400
    status, _ = await put_user(hub, "u1", {"name": "X", "role": "doctor"}, key="not-a-key")
    assert status == 401
    assert code(await doctor.call("conversation:open", {"member_ids": []})) == "bad_request"


async def test_appointments_carry_the_names_of_the_doctor_and_the_patient(hub: HubFixture):
    from channels.appointments import publish_event
    from tests.support.appointments import event

    services = hub.app()[SERVICES]
    doctor_id, patient_id = hub.user("dr"), hub.user("pat")
    await services.directory.put(doctor_id, "Maya Chen", "doctor", "MD")
    await services.directory.put(patient_id, "Jane Roe", "patient", None)
    patient = await hub.connect(patient_id, "patient")
    await publish_event(
        services.redis, event("apt-names", "confirmed", doctor_id=doctor_id, patient_id=patient_id)
    )
    updated = await patient.wait_for("appointment:updated")
    assert updated["appointment"]["doctor_name"] == "Maya Chen"
    assert updated["appointment"]["patient_name"] == "Jane Roe"
    listed = await patient.call("appointment:list", {})
    assert listed["appointments"][0]["doctor_name"] == "Maya Chen"
