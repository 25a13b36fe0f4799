"""Chat scenarios several test modules share."""

from __future__ import annotations

import uuid

from tests.support.hubs import Client, HubFixture


async def open_pair(hub: HubFixture) -> tuple[Client, Client, str]:
    doctor = await hub.connect(hub.user("doc"), "doctor")
    patient = await hub.connect(hub.user("pat"), "patient")
    ack = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    assert ack["ok"], ack
    return doctor, patient, ack["conversation"]["id"]


async def send(client: Client, conversation_id: str, body: str) -> dict:
    client_id = uuid.uuid4().hex
    return await client.call(
        "message:send", {"conversation_id": conversation_id, "client_id": client_id, "body": body}
    )


async def send_with(
    client: Client, conversation_id: str, attachment_ids: list[str], body: str = ""
) -> dict:
    """A message carrying attachments (uploaded and released already)."""
    return await client.call(
        "message:send",
        {
            "conversation_id": conversation_id,
            "client_id": uuid.uuid4().hex,
            "body": body,
            "attachment_ids": attachment_ids,
        },
    )


def code(ack: dict) -> str:
    assert ack["ok"] is False, ack
    assert set(ack["error"]) == {"code", "message"}
    return ack["error"]["code"]
