"""Staff-only notes: to the clinic's people, never to a patient, by any way."""

from __future__ import annotations

import aiohttp

from hub.server.appkeys import SERVICES
from tests.support.chat import code
from tests.support.hubs import TIMEOUT, HubFixture

SECRET_NOTE = "Patient seems anxious; consider referral to psychiatry"


async def test_a_listening_patient_never_receives_a_staff_note(hub: HubFixture):
    directory = hub.app()[SERVICES].directory
    doctor = await hub.connect(hub.user("dr"), "doctor")
    nurse = await hub.connect(hub.user("rn"), "nurse")
    patient = await hub.connect(hub.user("pat"), "patient")
    for client, role in ((doctor, "doctor"), (nurse, "nurse"), (patient, "patient")):
        await directory.put(client.user_id, client.user_id.title(), role, None)
    opened = await doctor.call(
        "conversation:open", {"member_ids": [nurse.user_id, patient.user_id]}
    )
    conversation_id = opened["conversation"]["id"]

    first = await patient.call(
        "message:send", {"conversation_id": conversation_id, "client_id": "p1", "body": "Hi"}
    )
    note = await doctor.call(
        "message:send",
        {
            "conversation_id": conversation_id,
            "client_id": "n1",
            "body": SECRET_NOTE,
            "visibility": "staff",
        },
    )
    assert note["ok"], note
    assert note["note"]["visibility"] == "staff" and note["note"]["seq"] == 1
    got = await nurse.wait_for("note:new")
    assert got["note"]["body"] == SECRET_NOTE
    second = await patient.call(
        "message:send", {"conversation_id": conversation_id, "client_id": "p2", "body": "Hello?"}
    )
    # The messages' seqs have no gap for the note: it lives apart.
    assert second["message"]["seq"] == first["message"]["seq"] + 1
    await doctor.wait_for("message:new", lambda d: d["message"]["client_id"] == "p2")

    history = await patient.call("message:history", {"conversation_id": conversation_id})
    synced = await patient.call("sync", {"cursors": {conversation_id: 0}})
    url = hub.servers[0].make_url(f"/api/v1/conversations/{conversation_id}/messages")
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.get(url, headers={"Authorization": f"Bearer {patient.token}"}) as response,
    ):
        rest = await response.text()
    everything = [str(data) for _, data in patient.recorder.events]
    for seen in (str(history), str(synced), rest, *everything):
        assert SECRET_NOTE not in seen
    assert not patient.recorder.of("note:new")
    assert code(await patient.call("note:history", {"conversation_id": conversation_id})) == (
        "forbidden"
    )
    sneaky = {
        "conversation_id": conversation_id,
        "client_id": "p3",
        "body": "x",
        "visibility": "staff",
    }
    assert code(await patient.call("message:send", sneaky)) == "forbidden"

    notes = await nurse.call("note:history", {"conversation_id": conversation_id})
    assert [n["body"] for n in notes["notes"]] == [SECRET_NOTE]
    with_files = {**sneaky, "client_id": "n2", "attachment_ids": ["a1"]}
    assert code(await doctor.call("message:send", with_files)) == "bad_request"
