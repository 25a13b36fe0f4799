"""Edits and retractions: live on every hub, in history and sync, and kept in the record."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import orjson
import pytest

from hub.core.settings import Settings
from hub.server.appkeys import SERVICES
from tests.support.chat import code, open_pair, send
from tests.support.hubs import TIMEOUT, HubFixture, MakeHub

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks


async def audit_lines(hub: HubFixture, conversation_id: str, token: str) -> tuple[int, list]:
    url = hub.servers[0].make_url(f"/api/v1/audit/conversations/{conversation_id}")
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        body = await response.read()
    if response.status != 200:
        return response.status, [orjson.loads(body)]
    return 200, [orjson.loads(line) for line in body.splitlines()]


@pytest.mark.also_on_cluster
async def test_edit_and_retract_reach_every_hub_and_a_device_that_was_offline(
    make_hub: MakeHub,
):
    hub = await make_hub()
    await hub.start()  # a second hub on the same MongoDB and Redis
    doctor, patient, conversation_id = await open_pair(hub)
    nurse = await hub.connect(hub.user("rn"), "nurse", server=1)
    opened = await doctor.call(
        "conversation:open", {"member_ids": [patient.user_id, nurse.user_id]}
    )
    conversation_id = opened["conversation"]["id"]
    first = await send(doctor, conversation_id, "Take 50 mg twice a day")
    second = await send(doctor, conversation_id, "Results for another patient: negative")
    assert first["ok"] and second["ok"]
    cursor = second["message"]["seq"]
    await nurse.wait_for("message:new", lambda d: d["message"]["seq"] == cursor)
    await patient.close()  # offline while the doctor corrects both

    edited = await doctor.call(
        "message:edit",
        {"conversation_id": conversation_id, "seq": first["message"]["seq"], "body": "Take 5 mg"},
    )
    assert edited["ok"], edited
    assert edited["message"]["body"] == "Take 5 mg" and edited["message"]["edited"] is True
    retracted = await doctor.call(
        "message:retract",
        {"conversation_id": conversation_id, "seq": cursor, "reason": "wrong patient"},
    )
    assert retracted["ok"], retracted
    assert retracted["message"]["retracted"] is True and retracted["message"]["body"] == ""

    # Live, on the other hub:
    live_edit = await nurse.wait_for("message:edited")
    assert live_edit["message"]["body"] == "Take 5 mg"
    live_retract = await nurse.wait_for("message:retracted")
    assert live_retract["message"]["seq"] == cursor
    assert "another patient" not in str(live_retract) and "wrong patient" not in str(live_retract)

    # The patient comes back on the other hub with the cursor it had: sync brings both.
    again = await hub.connect(patient.user_id, "patient", server=1)
    synced = await again.call("sync", {"cursors": {conversation_id: cursor}})
    assert synced["ok"] and synced["messages"] == []
    changed = {m["seq"]: m for m in synced["changed"]}
    assert changed[first["message"]["seq"]]["body"] == "Take 5 mg"
    assert changed[cursor]["retracted"] is True and changed[cursor]["body"] == ""
    top = max(m["change"] for m in synced["changed"])
    later = await again.call(
        "sync", {"cursors": {conversation_id: cursor}, "changes": {conversation_id: top}}
    )
    assert later["changed"] == []  # nothing new since the last change it saw

    history = await again.call("message:history", {"conversation_id": conversation_id})
    bodies = [m["body"] for m in history["messages"]]
    assert bodies == ["Take 5 mg", ""]
    assert "another patient" not in str(history)


async def test_only_the_sender_changes_a_message_and_within_the_window(
    make_hub: MakeHub, settings: Settings
):
    hub = await make_hub(replace(settings, record=replace(settings.record, edit_window=0.001)))
    doctor, patient, conversation_id = await open_pair(hub)
    sent = await send(patient, conversation_id, "I feel dizzy")
    seq = sent["message"]["seq"]
    edit = {"conversation_id": conversation_id, "seq": seq, "body": "I feel fine"}
    assert code(await doctor.call("message:edit", edit)) == "forbidden"  # not the sender
    assert code(await patient.call("message:edit", edit)) == "forbidden"  # window passed
    missing = {**edit, "seq": seq + 10}
    assert code(await patient.call("message:edit", missing)) == "not_found"
    blank = {**edit, "body": "   "}
    assert code(await patient.call("message:edit", blank)) == "bad_request"
    stranger = await hub.connect(hub.user("other"), "patient")
    retract = {"conversation_id": conversation_id, "seq": seq, "reason": "mistake"}
    assert code(await stranger.call("message:retract", retract)) == "forbidden"
    # The patient's retraction window is the default 15 minutes: still open.
    assert (await patient.call("message:retract", retract))["ok"]
    assert (await patient.call("message:retract", retract))["ok"]  # twice: no change
    assert code(await patient.call("message:edit", edit)) == "conflict"
    # The clinic's people retract at any time.
    note = await send(doctor, conversation_id, "See you Monday")
    with_reason = {**retract, "seq": note["message"]["seq"], "reason": "typo"}
    assert (await doctor.call("message:retract", with_reason))["ok"]


async def test_every_version_is_kept_and_only_an_admin_reads_them(hub: HubFixture):
    doctor, patient, conversation_id = await open_pair(hub)
    sent = await send(doctor, conversation_id, "Dose: 10 mg")
    seq = sent["message"]["seq"]
    for body in ("Dose: 20 mg", "Dose: 25 mg"):
        edited = await doctor.call(
            "message:edit", {"conversation_id": conversation_id, "seq": seq, "body": body}
        )
        assert edited["ok"], edited
    await doctor.call(
        "message:retract", {"conversation_id": conversation_id, "seq": seq, "reason": "wrong"}
    )
    note = await doctor.call(
        "message:send",
        {
            "conversation_id": conversation_id,
            "client_id": "n1",
            "body": "Staff only: check the chart",
            "visibility": "staff",
        },
    )
    assert note["ok"]

    status, refused = await audit_lines(hub, conversation_id, doctor.token)
    assert status == 403 and refused[0]["error"]["code"] == "forbidden"
    admin = hub.user("admin")
    status, lines = await audit_lines(hub, conversation_id, hub.token(admin, "admin"))
    assert status == 200
    versions = [line["doc"] for line in lines if line["kind"] == "version"]
    assert [(v["version"], v["body"], v["replaced_by"]) for v in versions] == [
        (1, "Dose: 10 mg", "edit"),
        (2, "Dose: 20 mg", "edit"),
        (3, "Dose: 25 mg", "retract"),
    ]
    assert versions[-1]["reason"] == "wrong"
    message = next(line["doc"] for line in lines if line["kind"] == "message")
    assert message["body"] == "" and message["retracted_at"]
    notes = [line["doc"]["body"] for line in lines if line["kind"] == "staff_note"]
    assert notes == ["Staff only: check the chart"]
    assert lines[0]["kind"] == "conversation"
    audit = hub.app()[SERVICES].db["audit"]
    # Each change is a step of the record, as every other: who, which message and version.
    steps = await audit.find({"message_id": {"$exists": True}}).sort("at", 1).to_list(None)
    assert [
        (a["action"], a["actor_id"], a["seq"], a["replaced_version"], a["version"]) for a in steps
    ] == [
        ("message.edited", doctor.user_id, seq, 1, 2),
        ("message.edited", doctor.user_id, seq, 2, 3),
        ("message.retracted", doctor.user_id, seq, 3, 4),
    ]
    assert all(str(a["message_id"]) == sent["message"]["id"] for a in steps)
    assert not [a for a in steps if "wrong" in str(a) or "Dose" in str(a)]  # no text in it
    assert any(
        line["kind"] == "audit" and line["doc"].get("action") == "message.edited" for line in lines
    )
    assert (
        await audit.count_documents(
            {"action": "audit.exported", "actor_id": admin, "conversation_id": conversation_id}
        )
        == 1
    )
    status, _ = await audit_lines(hub, "no-such-conversation", hub.token(admin, "admin"))
    assert status == 404
