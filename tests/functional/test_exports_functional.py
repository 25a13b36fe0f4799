"""Patients' exports: a FHIR R4 bundle that validates and round-trips, a PDF, short-lived
links, only the patient's own record, and a large record streamed in bounded memory."""

from __future__ import annotations

import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from bson import ObjectId
from fhir.resources.R4B.bundle import Bundle
from pymongo import AsyncMongoClient

from hub.core.settings import Settings
from hub.record.exports import Exports
from hub.server.appkeys import SERVICES
from storage import names
from storage.attachments import AttachmentStore
from storage.audit import AuditLog
from storage.directory import Directory
from storage.exports import ExportStore
from tests.support.attachments import download, uploaded
from tests.support.chat import code, open_pair, send, send_with
from tests.support.consultations import consultation, say
from tests.support.files import photo
from tests.support.hubs import TIMEOUT, HubFixture
from tests.support.sms import until

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks

STAFF_NOTE = "Staff only: patient seemed anxious"
DRAFT = "Draft: possible eczema, unconfirmed"
APPROVED = "Assessment: contact dermatitis. Plan: emollients."


def local(hub: HubFixture, link: str) -> str:
    """A link the hub made (for its public URL) on the test's server."""
    parts = urlsplit(link)
    return str(hub.servers[0].make_url(parts.path)) + "?" + parts.query


async def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT * 2)) as http,
        http.get(url, headers=headers) as response,
    ):
        return response.status, await response.read()


def resources(bundle: Bundle, kind: str) -> list[Any]:
    return [e.resource for e in bundle.entry or [] if e.resource.__resource_type__ == kind]


async def test_a_patients_export_validates_round_trips_and_leaves_out_staff_notes(
    hub: HubFixture,
):
    services = hub.app()[SERVICES]
    doctor, patient, consultation_id = await consultation(hub)
    await services.directory.put(doctor.user_id, "Dr Ada Lovelace", "doctor", None)
    opened = await doctor.call("conversation:open", {"member_ids": [patient.user_id]})
    conversation_id = opened["conversation"]["id"]
    image = await uploaded(hub, patient, conversation_id, photo(), "rash.jpg")
    with_photo = await send_with(patient, conversation_id, [image["id"]], "Here is my rash — сыпь")
    assert with_photo["ok"], with_photo
    reply = await send(doctor, conversation_id, "Apply the cream twice a day")
    await doctor.call(
        "message:edit",
        {
            "conversation_id": conversation_id,
            "seq": reply["message"]["seq"],
            "body": "Apply the cream once a day",
        },
    )
    wrong = await send(doctor, conversation_id, "Your HIV test is negative")
    await doctor.call(
        "message:retract",
        {"conversation_id": conversation_id, "seq": wrong["message"]["seq"], "reason": "wrong"},
    )
    note = await doctor.call(
        "message:send",
        {
            "conversation_id": conversation_id,
            "client_id": "n1",
            "body": STAFF_NOTE,
            "visibility": "staff",
        },
    )
    assert note["ok"]
    await say(doctor, consultation_id, "The rash started after gardening")
    store = services.consultations.store
    for request_id, text in (("draft", DRAFT), ("approved", "Assessment: dermatitis")):
        await store.record_output(
            {
                "_id": request_id,
                "consultation_id": consultation_id,
                "kind": "note",
                "status": "done",
                "text": text,
                "created_at": datetime.now(UTC),
            }
        )
    approve = {"consultation_id": consultation_id, "request_id": "approved", "text": APPROVED}
    assert code(await patient.call("assistant:approve", approve)) == "forbidden"
    approved = await doctor.call("assistant:approve", approve)
    assert approved["ok"] and approved["note"]["text"] == APPROVED, approved

    assert code(await doctor.call("export:request", {})) == "forbidden"
    asked = await patient.call("export:request", {})
    assert asked["ok"] and asked["export"]["state"] == "pending", asked
    ready = await patient.wait_for(
        "export:ready", lambda d: d["export"]["id"] == asked["export"]["id"], timeout=30
    )
    export = ready["export"]
    assert export["state"] == "ready", export

    status, raw = await get(local(hub, export["links"]["bundle"]))  # a signed link: no token needed
    assert status == 200
    bundle = Bundle.model_validate_json(raw)  # the FHIR R4 structure, all of it
    assert bundle.type == "collection"
    for secret in (STAFF_NOTE, DRAFT, "HIV", "Assessment: dermatitis"):
        assert secret.encode() not in raw
    communications = resources(bundle, "Communication")
    threads = [c for c in communications if not c.partOf]
    messages = [c for c in communications if c.partOf]
    stored = await services.db[names.MESSAGES].count_documents(
        {"conversation_id": {"$in": [t.identifier[0].value for t in threads]}}
    )
    assert len(threads) == 2 and len(messages) == stored == 3
    texts = [p.contentString for m in messages for p in m.payload or [] if p.contentString]
    assert texts == ["Here is my rash — сыпь", "Apply the cream once a day"]
    assert [m.status for m in messages] == ["completed", "completed", "entered-in-error"]
    assert "Edited" in messages[1].note[0].text
    attached = next(p.contentAttachment for p in messages[0].payload if p.contentAttachment)
    _, _, original = await download(hub, f"/api/v1/attachments/{image['id']}", patient.token)
    assert attached.data == original and attached.title == "rash.jpg"
    assert messages[1].sender.display == "Dr Ada Lovelace"
    assert {m.partOf[0].reference for m in messages} <= {e.fullUrl for e in bundle.entry}
    (appointment,) = resources(bundle, "Appointment")
    assert appointment.status == "proposed"
    documents = resources(bundle, "DocumentReference")
    contents = [d.content[0].attachment.data.decode() for d in documents]
    assert "gardening" in contents[0] and contents[1] == APPROVED
    assert export["counts"] == {"Communication": 5, "Appointment": 1, "DocumentReference": 2}

    status, document = await get(local(hub, export["links"]["pdf"]))
    assert status == 200 and document.startswith(b"%PDF-") and document.rstrip().endswith(b"%%EOF")

    # Nobody else's: another patient, a forged link, the wrong patient's token.
    other = await hub.connect(hub.user("other"), "patient")
    assert code(await other.call("export:url", {"export_id": export["id"]})) == "not_found"
    # A person whose id looks like a service's is still a person.
    pretender = await hub.connect(f"service:{hub.user('records')}", "patient")
    assert code(await pretender.call("export:url", {"export_id": export["id"]})) == "not_found"
    path = f"/api/v1/exports/{export['id']}/bundle"
    status, _ = await get(str(hub.servers[0].make_url(path)), other.token)
    assert status == 404
    # Proxies log URLs: a link names nobody (it carried ?user=<the patient's id>).
    for link in export["links"].values():
        assert patient.user_id not in link and "user=" not in link
    sealed = export["links"]["bundle"].split("for=", 1)[1].split("&", 1)[0]
    for forged_value in (sealed[:-2] + ("AA" if not sealed.endswith("AA") else "BB"), "x"):
        forged = export["links"]["bundle"].replace(f"for={sealed}", f"for={forged_value}")
        status, _ = await get(local(hub, forged))
        assert status == 401
    status, _ = await get(str(hub.servers[0].make_url(path)), patient.token)
    assert status == 200
    fresh = await patient.call("export:url", {"export_id": export["id"]})
    assert fresh["ok"] and fresh["export"]["links"]["pdf"]
    actions = [
        a["action"]
        for a in await services.db[names.AUDIT]
        .find({"export_id": export["id"]})
        .sort("at", 1)
        .to_list(None)
    ]
    assert actions[:2] == ["export.requested", "export.built"]
    assert actions.count("export.downloaded") == 3


async def test_the_clinic_asks_for_an_export_with_its_service_key(hub: HubFixture):
    services = hub.app()[SERVICES]
    key = await services.service_keys.create("records")
    patient_id = hub.user("pat")
    url = hub.servers[0].make_url("/api/v1/exports")
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
        async with http.post(url, json={"patient_id": patient_id}, headers=headers) as response:
            assert response.status == 202
            export_id = (await response.json())["export"]["id"]
        async with http.post(url, json={"patient_id": "x"}) as response:
            assert response.status == 401

        async def ready() -> dict[str, Any] | None:
            async with http.get(f"{url}/{export_id}", headers=headers) as response:
                export = (await response.json())["export"]
            return export if export["state"] == "ready" else None

        export = await until(ready, timeout=30)
    status, raw = await get(local(hub, export["links"]["bundle"]))
    assert status == 200
    assert Bundle.model_validate_json(raw).entry is None  # nothing on record: an empty bundle
    requested = await services.db[names.AUDIT].find_one(
        {"action": "export.requested", "export_id": export_id}
    )
    assert requested is not None and requested["actor_id"] == "system:service:records"


async def test_a_download_of_an_export_still_being_built_answers_409(hub: HubFixture):
    """It answered 404, as if there were no such export; a pending attachment answers
    409, and a client waits and asks again."""
    services = hub.app()[SERVICES]
    patient = await hub.connect(hub.user("pat"), "patient")
    export_id = f"exp_{uuid.uuid4().hex[:24]}"
    await services.db[names.EXPORTS].insert_one(
        {
            "_id": export_id,
            "patient_id": patient.user_id,
            "state": "building",
            "lease_until": datetime.now(UTC) + timedelta(hours=1),  # another hub's
            "created_at": datetime.now(UTC),
        }
    )
    url = str(hub.servers[0].make_url(f"/api/v1/exports/{export_id}/bundle"))
    status, body = await get(url, patient.token)
    assert status == 409 and orjson.loads(body)["error"]["code"] == "conflict"
    other = await hub.connect(hub.user("other"), "patient")
    assert (await get(url, other.token))[0] == 404  # someone else's: not said to exist


class _Links:
    def sign_path(self, path: str, user_id: str) -> tuple[str, datetime]:
        return path, datetime.now(UTC) + timedelta(minutes=5)

    def verify_signed(self, path: str, query: dict[str, str]) -> str:
        raise AssertionError("not used")

    def absolute(self, path: str) -> str:
        return path


async def test_a_large_export_streams_in_bounded_memory(settings: Settings):
    """10,000 messages and a 12 MB attachment: the bundle is written as it is read (the
    PDF, about 2.5 times the messages' text, is what the hub holds)."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(settings.mongodb_url, tz_aware=True)
    try:
        db = client[settings.mongodb_db]
        attachments = AttachmentStore(db)
        patient_id, doctor_id, conversation_id = "pat-big", "dr-big", "conv-big"
        await db[names.CONVERSATIONS].insert_one(
            {
                "_id": conversation_id,
                "member_ids": [doctor_id, patient_id],
                "created_at": datetime.now(UTC),
            }
        )
        content = bytes(range(256)) * (12 * 4096)

        async def chunks() -> Any:
            for start in range(0, len(content), 64 * 1024):
                yield content[start : start + 64 * 1024]

        file_id, size = await attachments.store_file(chunks(), "scan.pdf")
        await db[names.ATTACHMENTS].insert_one(
            {
                "_id": "att-big",
                "conversation_id": conversation_id,
                "state": "released",
                "file_id": file_id,
                "size": size,
            }
        )
        start = datetime.now(UTC) - timedelta(days=30)
        body = "Follow-up about the results of last week, and the next steps. " * 3
        docs = [
            {
                "_id": ObjectId(),
                "conversation_id": conversation_id,
                "seq": seq,
                "sender_id": doctor_id if seq % 2 else patient_id,
                "client_id": f"c{seq}",
                "body": f"{seq}: {body}",
                "created_at": start + timedelta(seconds=seq),
            }
            for seq in range(1, 10_001)
        ]
        docs[0]["attachments"] = [
            {"id": "att-big", "name": "scan.pdf", "type": "application/pdf", "size": size}
        ]
        await db[names.MESSAGES].insert_many(docs)
        del docs
        store = ExportStore(db)

        async def notify(room: str, event: str, data: dict[str, Any]) -> None:
            pass

        exports = Exports(
            settings.record,
            "Clinic",
            store,
            attachments,
            Directory(db),
            _Links(),
            notify,
            AuditLog(db),
        )
        export = await store.create(patient_id, patient_id)
        tracemalloc.start()
        try:
            assert await exports.build_next()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        built = await store.get(export["_id"])
        assert built["state"] == "ready", built
        bundle_size = built["files"]["bundle"]["size"]
        assert built["counts"]["Communication"] == 10_001
        assert bundle_size > 20 * 1024 * 1024
        assert peak < bundle_size / 2, (peak, bundle_size)
        opened = await store.open_file(built["files"]["bundle"]["file_id"])
        raw = b"".join([piece async for piece in opened.read()])
        bundle = Bundle.model_validate_json(raw)
        assert len(bundle.entry) == 10_001
        first = bundle.entry[1].resource
        assert first.payload[1].contentAttachment.data == content
    finally:
        await client.close()


async def test_an_export_that_cannot_be_built_fails_cleanly_and_logs_no_text(
    hub: HubFixture, caplog: Any
):
    """A damaged document (no date) fails the export: the patient hears of it, the
    log says where, and the message's text is in no log line."""
    doctor, patient, conversation_id = await open_pair(hub)
    sent = await send(patient, conversation_id, "My HIV medication makes me dizzy")
    db = hub.app()[SERVICES].db
    await db[names.MESSAGES].update_one(
        {"_id": ObjectId(sent["message"]["id"])}, {"$unset": {"created_at": ""}}
    )
    asked = await patient.call("export:request", {})
    failed = await patient.wait_for(
        "export:ready", lambda d: d["export"]["id"] == asked["export"]["id"], timeout=30
    )
    assert failed["export"]["state"] == "failed" and "links" not in failed["export"]
    assert any("failed: KeyError" in r.getMessage() for r in caplog.records)
    assert not any("HIV" in r.getMessage() or r.exc_info for r in caplog.records)
    assert await db[f"{names.EXPORT_FILES}.chunks"].count_documents({}) == 0
