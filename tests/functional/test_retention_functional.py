"""Retention: what is past its period goes, across every collection and GridFS; what is
under a legal hold stays; live traffic goes on meanwhile."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from bson import ObjectId

from hub.core.settings import Settings
from hub.server.appkeys import SERVICES
from storage import names
from tests.support.attachments import download, uploaded
from tests.support.chat import send, send_with
from tests.support.files import pdf
from tests.support.hubs import TIMEOUT, Client, HubFixture, MakeHub

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks

OLD = datetime.now(UTC) - timedelta(days=400)


class Clinic:
    """What the clinic's back-end does over HTTP with its service key."""

    def __init__(self, hub: HubFixture, key: str) -> None:
        self.hub, self.key = hub, key

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
            http.request(
                method,
                self.hub.servers[0].make_url(path),
                json=body,
                headers={"Authorization": f"Bearer {self.key}"},
            ) as response,
        ):
            return response.status, await response.json()


async def chat(hub: HubFixture, doctor: Client, patient_name: str) -> tuple[Client, str]:
    patient = await hub.connect(hub.user(patient_name), "patient")
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    return patient, opened["conversation"]["id"]


async def backdate(db: Any, collection: str, query: dict[str, Any]) -> None:
    await db[collection].update_many(query, {"$set": {"created_at": OLD}})


async def fill(hub: HubFixture, doctor: Client, conversation_id: str, patient: Client) -> str:
    """Messages (one edited), a staff note and an attachment, all dated 400 days ago;
    the attachment's id."""
    attachment = await uploaded(hub, doctor, conversation_id, pdf(padding=300_000), "scan.pdf")
    sent = await send_with(doctor, conversation_id, [attachment["id"]], "Your scan")
    assert sent["ok"], sent
    reply = await send(patient, conversation_id, f"{conversation_id}: my rash is worse")
    edited = await patient.call(
        "message:edit",
        {
            "conversation_id": conversation_id,
            "seq": reply["message"]["seq"],
            "body": f"{conversation_id}: my rash is better",
        },
    )
    assert edited["ok"], edited
    note = await doctor.call(
        "message:send",
        {
            "conversation_id": conversation_id,
            "client_id": uuid.uuid4().hex,
            "body": "Staff: follow up",
            "visibility": "staff",
        },
    )
    assert note["ok"], note
    db = hub.app()[SERVICES].db
    mine = {"conversation_id": conversation_id}
    for collection in (names.MESSAGES, names.STAFF_NOTES, names.ATTACHMENTS):
        await backdate(db, collection, mine)
    return str(attachment["id"])


async def consult(hub: HubFixture, doctor_id: str, patient_id: str) -> str:
    """A consultation with a transcript and an assistant output, dated 400 days ago."""
    store = hub.app()[SERVICES].consultations.store
    appointment_id = f"apt-{uuid.uuid4().hex[:8]}"
    consultation = await store.open(
        {"_id": appointment_id, "doctor_id": doctor_id, "patient_id": patient_id}, True
    )
    cid = consultation.consultation_id
    await store.append(cid, "s1", "patient", "It itches at night", None)
    await store.record_output(
        {"_id": uuid.uuid4().hex, "consultation_id": cid, "kind": "note", "text": "Eczema?"}
    )
    db = hub.app()[SERVICES].db
    await backdate(db, names.TRANSCRIPT, {"consultation_id": cid})
    await backdate(db, names.ASSISTANT_OUTPUTS, {"consultation_id": cid})
    return cid


async def test_retention_deletes_what_is_past_its_period_and_nothing_under_hold(
    make_hub: MakeHub, settings: Settings
):
    hub = await make_hub(
        replace(
            settings,
            record=replace(settings.record, retention_batch=2, retention_pause=0.01),
        )
    )
    services = hub.app()[SERVICES]
    db = services.db
    clinic = Clinic(hub, await services.service_keys.create("backend"))
    doctor = await hub.connect(hub.user("dr"), "doctor")
    gone, gone_id = await chat(hub, doctor, "gone")
    held, held_id = await chat(hub, doctor, "held")
    by_thread, thread_id = await chat(hub, doctor, "thread")
    gone_file = await fill(hub, doctor, gone_id, gone)
    held_file = await fill(hub, doctor, held_id, held)
    await fill(hub, doctor, thread_id, by_thread)
    within = await send(doctor, gone_id, "Ten months old, within the period: kept")
    await db[names.MESSAGES].update_one(
        {"_id": ObjectId(within["message"]["id"])},
        {"$set": {"created_at": datetime.now(UTC) - timedelta(days=300)}},
    )
    recent = await send(doctor, gone_id, "A new message, kept")
    gone_consultation = await consult(hub, doctor.user_id, gone.user_id)
    held_consultation = await consult(hub, doctor.user_id, held.user_id)
    for user in (gone.user_id, held.user_id):
        await db[names.NOTIFICATIONS].insert_many(
            [
                {"_id": f"n-{user}-old", "user_id": user, "created_at": OLD, "kind": "x"},
                {"_id": f"n-{user}-new", "user_id": user, "created_at": datetime.now(UTC)},
            ]
        )
    await db[names.SMS_OUTBOX].insert_many(
        [
            {"_id": "sms-sent", "user_id": gone.user_id, "state": "sent", "created_at": OLD},
            {"_id": "sms-open", "user_id": gone.user_id, "state": "pending", "created_at": OLD},
            {"_id": "sms-held", "user_id": held.user_id, "state": "sent", "created_at": OLD},
        ]
    )
    await db[names.WEBHOOK_OUTBOX].insert_many(
        [
            {"_id": "wh-delivered", "state": "delivered", "created_at": OLD},
            {"_id": "wh-dead", "state": "dead", "created_at": OLD},  # waits for a replay
        ]
    )
    gone_record = await db[names.ATTACHMENTS].find_one({"_id": gone_file})
    assert gone_record is not None

    status, answer = await clinic.call(
        "PUT", "/api/v1/holds/case-1", {"patient_id": held.user_id, "reason": "litigation"}
    )
    assert status == 200 and answer["hold"]["patient_id"] == held.user_id, answer
    status, answer = await clinic.call(
        "PUT", "/api/v1/holds/case-2", {"conversation_id": thread_id, "reason": "complaint"}
    )
    assert status == 200, answer
    status, answer = await clinic.call("PUT", "/api/v1/holds/bad", {"reason": "none named"})
    assert status == 400
    status, answer = await clinic.call(
        "PUT",
        "/api/v1/clinic/retention",
        {
            "messages": 365,
            "attachments": 365,
            "transcripts": 365,
            "assistant": 365,
            "notifications": 30,
        },
    )
    assert status == 200 and answer["retention"]["notifications"] == 30, answer

    # Chat goes on in another conversation while the run deletes, two documents a batch.
    busy, busy_id = await chat(hub, doctor, "busy")

    async def chatter() -> list[bool]:
        return [(await send(busy, busy_id, f"message {i}"))["ok"] for i in range(40)]

    versions = await db[names.MESSAGE_VERSIONS].count_documents({"conversation_id": gone_id})
    assert versions == 1  # the edited reply's first wording
    acks, record = await asyncio.gather(chatter(), services.retention.run_if_due())
    assert all(acks)
    assert record is not None
    assert await services.retention.run_if_due() is None  # one run per HUB_RETENTION_EVERY

    # The patient without a hold: messages, versions, notes, attachment bytes, transcript,
    # assistant output, old notifications and the settled SMS row are gone.
    left = await db[names.MESSAGES].find({"conversation_id": gone_id}).to_list(None)
    assert [m["body"] for m in left] == [
        "Ten months old, within the period: kept",
        "A new message, kept",
    ]
    # Nothing of it is left anywhere: a search of every collection finds no trace.
    for collection in await db.list_collection_names():
        async for doc in db[collection].find():
            assert f"{gone_id}: my rash" not in str(doc), collection
            assert "It itches" not in str(doc) or doc.get("consultation_id") == held_consultation
    assert await db[names.MESSAGE_VERSIONS].count_documents({"conversation_id": gone_id}) == 0
    notes = await db[names.STAFF_NOTES].find({"conversation_id": gone_id}).to_list(None)
    assert [(n["body"], n.get("expired")) for n in notes] == [("", True)]  # its seq stays
    assert await db[names.ATTACHMENTS].count_documents({"_id": gone_file}) == 0
    files = db[f"{names.ATTACHMENT_FILES}.files"]
    chunks = db[f"{names.ATTACHMENT_FILES}.chunks"]
    assert await files.count_documents({"_id": gone_record["file_id"]}) == 0
    assert await chunks.count_documents({"files_id": gone_record["file_id"]}) == 0
    assert await db[names.TRANSCRIPT].count_documents({"consultation_id": gone_consultation}) == 0
    assert (
        await db[names.ASSISTANT_OUTPUTS].count_documents({"consultation_id": gone_consultation})
        == 0
    )
    assert await db[names.NOTIFICATIONS].count_documents({"user_id": gone.user_id}) == 1
    assert {d["_id"] for d in await db[names.SMS_OUTBOX].find().to_list(None)} == {
        "sms-open",
        "sms-held",
    }
    # Under hold, by patient and by conversation: everything stays, and downloads.
    for conversation_id in (held_id, thread_id):
        assert await db[names.MESSAGES].count_documents({"conversation_id": conversation_id}) == 2
        assert (
            await db[names.MESSAGE_VERSIONS].count_documents({"conversation_id": conversation_id})
            == 1
        )
    status, _, body = await download(hub, f"/api/v1/attachments/{held_file}", held.token)
    assert status == 200 and body == pdf(padding=300_000)
    assert await db[names.TRANSCRIPT].count_documents({"consultation_id": held_consultation}) == 1
    assert await db[names.NOTIFICATIONS].count_documents({"user_id": held.user_id}) == 2
    # The busy conversation's new messages are all there.
    assert await db[names.MESSAGES].count_documents({"conversation_id": busy_id}) == 40

    # One audit record of the run.
    runs = await db[names.AUDIT].find({"action": "retention.run"}).to_list(None)
    assert len(runs) == 1
    kinds = runs[0]["kinds"]
    # Two messages, the staff note (emptied to a stub: see below) and the replaced
    # version of the edited one: every document that went is counted (it said 3).
    assert kinds["messages"]["days"] == 365 and kinds["messages"]["deleted"] == 3 + versions
    assert kinds["attachments"]["deleted"] == 1 and kinds["transcripts"]["deleted"] == 1
    # A notification, an SMS row and a delivered webhook.
    assert kinds["notifications"]["deleted"] == 3
    assert [d["_id"] for d in await db[names.WEBHOOK_OUTBOX].find().to_list(None)] == ["wh-dead"]
    assert kinds["messages"]["oldest_kept"] is not None and runs[0]["holds"] == 2

    # Lifting the conversation's hold: the next run deletes it, but its last message
    # stays as a stub, so the next message's seq follows the ones devices saw.
    status, _ = await clinic.call("DELETE", "/api/v1/holds/case-2")
    assert status == 200
    status, _ = await clinic.call("DELETE", "/api/v1/holds/case-2")
    assert status == 404
    await services.retention.run()
    left = await db[names.MESSAGES].find({"conversation_id": thread_id}).to_list(None)
    assert [(m["seq"], m["body"], m.get("expired")) for m in left] == [(2, "", True)]
    after = await send(by_thread, thread_id, "Hello again")
    assert after["message"]["seq"] == 3
    history = await by_thread.call("message:history", {"conversation_id": thread_id})
    assert [m.get("expired", False) for m in history["messages"]] == [True, False]
    assert recent["ok"]


async def test_a_device_learns_at_its_next_sync_what_the_policy_deleted(hub: HubFixture):
    """A phone that synced a conversation before a retention run kept showing the
    deleted messages: ``sync`` with ``changes`` reported nothing."""
    services = hub.app()[SERVICES]
    db = services.db
    doctor = await hub.connect(hub.user("dr"), "doctor")
    patient, conversation_id = await chat(hub, doctor, "pat")
    other, other_id = await chat(hub, doctor, "other")
    for n in range(4):
        assert (await send(doctor, conversation_id, f"old {n}"))["ok"]
    assert (await send(doctor, other_id, "old, and the newest of its conversation"))["ok"]
    first = await patient.call("sync", {"cursors": {conversation_id: 0}})
    assert [m["seq"] for m in first["messages"]] == [1, 2, 3, 4] and first["expired"] == []
    await backdate(db, names.MESSAGES, {"seq": {"$lte": 3}, "conversation_id": conversation_id})
    await backdate(db, names.MESSAGES, {"conversation_id": other_id})

    # The clinic's admin sets the period with their own token (a service key did, only).
    admin = Clinic(hub, hub.token(hub.user("admin"), "admin"))
    status, answer = await admin.call("PUT", "/api/v1/clinic/retention", {"messages": 365})
    assert status == 200 and answer["retention"]["messages"] == 365, answer
    assert (await admin.call("GET", "/api/v1/clinic/retention"))[0] == 200
    nurse = Clinic(hub, hub.token(hub.user("nurse"), "nurse"))
    assert (await nurse.call("PUT", "/api/v1/clinic/retention", {"messages": 1}))[0] == 403
    await services.retention.run()

    synced = await patient.call("sync", {"cursors": {conversation_id: 4}, "changes": {}})
    assert synced["ok"] and synced["messages"] == [] and synced["changed"] == []
    [expired] = synced["expired"]
    assert expired["conversation_id"] == conversation_id and expired["seqs"] == [1, 2, 3]
    again = await patient.call(
        "sync", {"cursors": {conversation_id: 4}, "changes": {conversation_id: expired["change"]}}
    )
    assert again["expired"] == [] and again["changed"] == []  # told once

    # The newest message of a conversation stays as a stub: it comes as changed, expired.
    theirs = await other.call("sync", {"cursors": {other_id: 1}, "changes": {other_id: 0}})
    [stub] = theirs["changed"]
    assert stub["seq"] == 1 and stub["expired"] is True and stub["body"] == ""
    assert stub["change"] >= 1 and theirs["expired"] == []
    # The tombstones name seqs only: nothing of what was said.
    tombstones = await db[names.MESSAGE_EXPIRIES].find().to_list(None)
    assert all(set(t) == {"_id", "conversation_id", "change", "seqs", "at"} for t in tombstones)


async def test_an_admin_places_and_lifts_holds(hub: HubFixture):
    admin_id = hub.user("admin")
    admin = Clinic(hub, hub.token(admin_id, "admin"))
    body = {"patient_id": hub.user("pat"), "reason": "litigation"}
    status, answer = await admin.call("PUT", "/api/v1/holds/case-9", body)
    assert status == 200 and answer["hold"]["placed_by"] == admin_id, answer
    status, answer = await admin.call("GET", "/api/v1/holds")
    assert [h["id"] for h in answer["holds"]] == ["case-9"]
    doctor = Clinic(hub, hub.token(hub.user("dr"), "doctor"))
    assert (await doctor.call("DELETE", "/api/v1/holds/case-9"))[0] == 403
    assert (await admin.call("DELETE", "/api/v1/holds/case-9"))[0] == 200
    audit = hub.app()[SERVICES].db[names.AUDIT]
    actions = [a["action"] async for a in audit.find({"actor_id": admin_id}).sort("at", 1)]
    assert actions == ["hold.placed", "hold.lifted"]
