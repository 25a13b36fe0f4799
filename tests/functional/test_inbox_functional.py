"""The clinic's inbox against real servers: a patient writes to a pool, its nurses see
it, two of them race to claim it on two hub processes, it is transferred to a doctor
and to another pool, and the patient sees who joined but never a transfer's note."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest

from hub.server.appkeys import SERVICES
from storage import names
from tests.support.chat import code
from tests.support.hubs import TIMEOUT, HubFixture, MakeHub

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks


async def backend_put(hub: HubFixture, path: str, body: dict[str, Any]) -> dict[str, Any]:
    key = await hub.app()[SERVICES].service_keys.create(f"backend-{uuid.uuid4().hex[:6]}")
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.put(
            hub.servers[0].make_url(path), json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        answer = await response.json()
        assert response.status == 200, answer
        return answer


async def clinic(hub: HubFixture) -> dict[str, str]:
    people = {
        "rosa": (hub.user("rosa"), "Rosa Alvarez", "nurse", "RN"),
        "ben": (hub.user("ben"), "Ben Okafor", "nurse", "RN"),
        "dr": (hub.user("dr"), "Maya Chen", "doctor", "MD"),
        "desk": (hub.user("desk"), "Lee Park", "staff", None),
        "pat": (hub.user("pat"), "Jane Roe", "patient", None),
    }
    for user_id, name, role, title in people.values():
        await backend_put(
            hub, f"/api/v1/users/{user_id}", {"name": name, "role": role, "title": title}
        )
    ids = {label: person[0] for label, person in people.items()}
    await backend_put(
        hub,
        f"/api/v1/pools/triage-{hub.prefix}",
        {"name": "Nurse triage", "member_ids": [ids["rosa"], ids["ben"]], "lead_id": ids["rosa"]},
    )
    await backend_put(
        hub, f"/api/v1/pools/desk-{hub.prefix}", {"name": "Front desk", "member_ids": [ids["desk"]]}
    )
    return ids


@pytest.mark.also_on_cluster
async def test_a_patient_message_goes_from_the_triage_inbox_to_a_doctor(make_hub: MakeHub):
    hub = await make_hub()
    await hub.start()  # a second hub process on the same stores
    ids = await clinic(hub)
    triage, desk = f"triage-{hub.prefix}", f"desk-{hub.prefix}"
    rosa = await hub.connect(ids["rosa"], "nurse", server=0)
    ben = await hub.connect(ids["ben"], "nurse", server=1)
    dr = await hub.connect(ids["dr"], "doctor", server=1)
    front = await hub.connect(ids["desk"], "staff", server=0)
    patient = await hub.connect(ids["pat"], "patient", server=0)

    opened = await patient.call("conversation:open", {"pool_id": triage})
    assert opened["ok"], opened
    conversation_id = opened["conversation"]["id"]
    assert opened["conversation"]["member_ids"] == [patient.user_id]
    sent = await patient.call(
        "message:send",
        {"conversation_id": conversation_id, "client_id": "m1", "body": "My rash is spreading"},
    )
    assert sent["ok"], sent
    for nurse in (rosa, ben):  # both nurses of the pool, on either hub
        await nurse.wait_for("message:new", lambda d: d["message"]["seq"] == 1)
    listed = await rosa.call("inbox:list", {"pool_id": triage, "state": "unclaimed"})
    [item] = listed["conversations"]
    assert item["patient"]["name"] == "Jane Roe" and item["owner"] is None
    assert item["last_message"]["body"] == "My rash is spreading"
    assert item["waiting_since"] is not None and item["waiting_seconds"] >= 0
    assert code(await dr.call("inbox:list", {"pool_id": triage})) == "forbidden"
    assert code(await dr.call("message:history", {"conversation_id": conversation_id})) == (
        "forbidden"
    )

    # Two nurses claim at once, on two hub processes: one wins.
    answers = await asyncio.gather(
        rosa.call("conversation:claim", {"conversation_id": conversation_id}),
        ben.call("conversation:claim", {"conversation_id": conversation_id}),
    )
    winners = [a for a in answers if a["ok"]]
    losers = [a for a in answers if not a["ok"]]
    assert len(winners) == 1 and len(losers) == 1
    owner_name = winners[0]["route"]["owner"]["name"]
    assert losers[0]["error"]["code"] == "conflict"
    assert losers[0]["error"]["message"] == f"{owner_name} has this conversation"
    owner = rosa if owner_name == "Rosa Alvarez" else ben
    joined = await patient.wait_for(
        "message:new", lambda d: d["message"]["sender_id"] == "system:clinic"
    )
    assert joined["message"]["body"] == f"{owner_name}, RN joined the conversation."
    await (ben if owner is rosa else rosa).wait_for(
        "inbox:updated", lambda d: d["action"] == "claimed"
    )
    assert code(await dr.call("conversation:release", {"conversation_id": conversation_id})) == (
        "forbidden"
    )

    # The owner hands it to a doctor with a note for staff only.
    note = "Possible cellulitis, please look today"
    moved = await owner.call(
        "conversation:transfer",
        {"conversation_id": conversation_id, "to_user": dr.user_id, "note": note},
    )
    assert moved["ok"] and moved["route"]["owner"]["name"] == "Maya Chen"
    update = await dr.wait_for("inbox:updated", lambda d: d["action"] == "transferred")
    assert update["note"] == note
    await patient.wait_for("message:new", lambda d: "Maya Chen, MD joined" in d["message"]["body"])
    answer = await dr.call(
        "message:send",
        {"conversation_id": conversation_id, "client_id": "d1", "body": "Send a photo please"},
    )
    assert answer["ok"], answer
    await patient.wait_for("message:new", lambda d: d["message"]["sender_name"] == "Maya Chen")
    listed = await dr.call("conversation:list", {})
    assert conversation_id in [c["id"] for c in listed["conversations"]]

    # On to the front desk: unowned there, and the doctor keeps no hold on it.
    moved = await dr.call(
        "conversation:transfer", {"conversation_id": conversation_id, "to_pool": desk}
    )
    assert moved["ok"] and moved["route"] == {
        "conversation_id": conversation_id,
        "pool_id": desk,
        "owner": None,
    }
    at_desk = await front.call("inbox:list", {"pool_id": desk, "state": "all"})
    assert [c["conversation_id"] for c in at_desk["conversations"]] == [conversation_id]

    # The patient never saw a note; the audit trail has every change.
    seen = [str(data) for _, data in patient.recorder.events]
    assert not any(note in text for text in seen)
    assert not patient.recorder.of("inbox:updated")
    audit = (
        await hub.app()[SERVICES]
        .db[names.AUDIT]
        .find({"conversation_id": conversation_id})
        .to_list(None)
    )
    assert [a["action"] for a in audit] == [
        "conversation.claimed",
        "conversation.transferred",
        "conversation.transferred",
    ]
    assert audit[1]["detail"]["note"] == note


async def test_inbox_rules(hub: HubFixture):
    ids = await clinic(hub)
    patient = await hub.connect(ids["pat"], "patient")
    rosa = await hub.connect(ids["rosa"], "nurse")
    assert code(await patient.call("conversation:open", {"pool_id": "no-such-pool"})) == (
        "not_found"
    )
    assert code(await rosa.call("conversation:open", {"pool_id": f"triage-{hub.prefix}"})) == (
        "forbidden"
    )
    opened = await patient.call("conversation:open", {"pool_id": f"triage-{hub.prefix}"})
    again = await patient.call("conversation:open", {"pool_id": f"triage-{hub.prefix}"})
    assert opened["conversation"]["id"] == again["conversation"]["id"]
    conversation_id = opened["conversation"]["id"]
    assert code(await patient.call("conversation:claim", {"conversation_id": conversation_id})) == (
        "forbidden"
    )
    assert code(await rosa.call("conversation:release", {"conversation_id": conversation_id})) == (
        "conflict"
    )
    transfer = {"conversation_id": conversation_id, "to_user": ids["pat"]}
    assert code(await rosa.call("conversation:transfer", transfer)) == "bad_request"
    both = {"conversation_id": conversation_id, "to_user": ids["dr"], "to_pool": "x"}
    assert code(await rosa.call("conversation:transfer", both)) == "bad_request"
    assert (await rosa.call("conversation:claim", {"conversation_id": conversation_id}))["ok"]
    again = await rosa.call("conversation:claim", {"conversation_id": conversation_id})
    assert again["ok"]  # claiming what one owns already is harmless
    assert (await rosa.call("conversation:release", {"conversation_id": conversation_id}))["ok"]
    listed = await rosa.call("inbox:list", {"pool_id": f"triage-{hub.prefix}"})
    assert [c["owner"] for c in listed["conversations"]] == [None]
