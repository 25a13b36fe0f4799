"""Patients' exports (right of access): asked for, built in the background, downloaded.

A patient asks with ``export:request``, the clinic's back-end with ``POST
/api/v1/exports``. The export is a job in MongoDB: any hub builds it (one at a time,
with a lease, so a hub that stops midway leaves it to another), into two files in
GridFS: the FHIR R4 bundle (hub/record/fhir.py) and a PDF of the conversations
(hub/record/pdf.py). Both are downloaded with a short-lived signed link, or the
patient's own token; an export is deleted after ``HUB_EXPORT_KEEP``. Each step is
audited: asked for, built (with its counts), downloaded.

What an export holds: the patient's conversations (their messages as they stand now,
retracted ones marked with no text, attachments with their bytes), appointments,
consultation transcripts and the notes their doctor approved. Never staff notes,
replaced versions, or the assistant's drafts.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from hub.core import clock
from hub.core.auth import is_service
from hub.core.errors import Conflict, HubError, NotFound, Unavailable
from hub.core.metrics import Metrics
from hub.core.protocol import Push, iso
from hub.core.records import AttachmentState
from hub.core.rooms import DEFAULT_ROOMS, Rooms
from hub.core.settings import RecordSettings
from hub.record import fhir
from hub.record.pdf import ConversationPdf, find_font, sender_label
from storage.attachments import AttachmentStore, GridFile
from storage.audit import AuditLog
from storage.directory import Directory
from storage.exports import ExportStore

log = logging.getLogger(__name__)

FileKind = Literal["bundle", "pdf"]
FILES: dict[str, tuple[str, str]] = {  # kind -> (download name, content type)
    "bundle": ("record.fhir.json", "application/fhir+json"),
    "pdf": ("messages.pdf", "application/pdf"),
}
BUILD_LEASE = 600.0  # seconds a hub may take to build one export before another may
LOOK_EVERY = 30.0  # seconds between two looks for exports to build or delete
YIELD_EVERY = 20  # messages written between two turns given back to the event loop


class LinkSigner(Protocol):
    """Signed download links (the attachments' signer: one key for every link)."""

    def sign_path(self, path: str, user_id: str) -> tuple[str, datetime]: ...

    def verify_signed(self, path: str, query: dict[str, str]) -> str: ...

    def absolute(self, path: str) -> str: ...


Notify = Callable[[str, str, dict[str, Any]], Awaitable[None]]  # (room, event, data)


class Events(Protocol):
    """Where the hub tells other systems what happened (hub/delivery/webhooks.py)."""

    async def emit(self, event_type: str, key: str, data: Mapping[str, Any]) -> None: ...


def file_path(export_id: str, kind: str) -> str:
    return f"/api/v1/exports/{export_id}/{kind}"


class Exports:
    def __init__(
        self,
        settings: RecordSettings,
        clinic_name: str,
        store: ExportStore,
        attachments: AttachmentStore,
        directory: Directory,
        signer: LinkSigner,
        notify: Notify,
        audit: AuditLog,
        events: Events | None = None,
        metrics: Metrics | None = None,
        rooms: Rooms = DEFAULT_ROOMS,
    ) -> None:
        self._rooms = rooms
        self._metrics = metrics or Metrics()
        self._settings = settings
        self._clinic_name = clinic_name
        self.store = store
        self._attachments = attachments
        self._directory = directory
        self._signer = signer
        self._notify = notify
        self._audit = audit
        self._events = events
        self._font = find_font(settings.export_font)
        # Set by whoever runs the builds (hub.server.background): an export queued
        # here is built at once, not at the next look.
        self.kick: Callable[[], None] = lambda: None

    async def request(self, patient_id: str, requested_by: str) -> dict[str, Any]:
        """Queue an export of ``patient_id``'s record; it is built by the next free hub."""
        doc = await self.store.create(patient_id, requested_by)
        await self._audit.record(
            requested_by, "export.requested", patient_id=patient_id, export_id=doc["_id"]
        )
        self.kick()
        return self.to_wire(doc, requested_by)

    async def status(self, export_id: str, user_id: str) -> dict[str, Any]:
        """The export as ``user_id`` may see it: a patient only their own (NotFound for
        anyone else's); a service (:func:`~hub.core.auth.service_principal`) any."""
        doc = await self.store.get(export_id)
        if not is_service(user_id) and doc["patient_id"] != user_id:
            raise NotFound("no such export")
        return self.to_wire(doc, user_id)

    def to_wire(self, doc: dict[str, Any], user_id: str) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": doc["_id"],
            "patient_id": doc["patient_id"],
            "state": doc["state"],
            "created_at": iso(doc["created_at"]),
        }
        if doc["state"] == "ready":
            wire["ready_at"] = iso(doc["ready_at"])
            wire["counts"] = doc.get("counts", {})
            links: dict[str, str] = {}
            expires = None
            for kind in doc.get("files") or {}:
                url, expires = self._signer.sign_path(file_path(doc["_id"], kind), user_id)
                links[kind] = self._signer.absolute(url)
            wire["links"] = links
            if expires is not None:
                wire["links_expire_at"] = iso(expires)
        if doc["state"] == "failed":
            wire["reason"] = doc.get("reason", "")
        return wire

    async def open_download(
        self, export_id: str, kind: str, user_id: str
    ) -> tuple[GridFile, str, str]:
        """The file of a ready export, for its patient or a service; audited."""
        if kind not in FILES:
            raise NotFound("no such file")
        doc = await self.store.get(export_id)
        if not is_service(user_id) and doc["patient_id"] != user_id:
            raise NotFound("no such export")
        files = doc.get("files") or {}
        if doc["state"] in ("pending", "building"):
            # As a pending attachment: it will be there, ask again (not "no such export").
            raise Conflict("the export is still being built")
        if doc["state"] != "ready" or kind not in files:
            raise NotFound(f"the export is {doc['state']}")
        opened = await self.store.open_file(files[kind]["file_id"])
        await self._audit.record(
            user_id,
            "export.downloaded",
            patient_id=doc["patient_id"],
            export_id=export_id,
            file=kind,
        )
        name, content_type = FILES[kind]
        return opened, name, content_type

    def verify_link(self, export_id: str, kind: str, query: dict[str, str]) -> str:
        return self._signer.verify_signed(file_path(export_id, kind), query)

    # -- the background work -------------------------------------------------------------

    async def run_once(self) -> None:
        """Build what is waiting, then delete the exports kept past their time. Run at
        once when one is asked here, else every ``LOOK_EVERY`` seconds (another hub's
        request, a build left by a hub that stopped)."""
        try:
            while await self.build_next():
                pass
            before = clock.now() - timedelta(seconds=self._settings.export_keep)
            await self.store.expired(before)
        except HubError as exc:
            log.warning("exports: %s", exc.code)

    async def build_next(self) -> bool:
        """Build the oldest waiting export, if any; whether there was one."""
        doc = await self.store.claim(BUILD_LEASE)
        if doc is None:
            return False
        try:
            files, counts = await self._build(doc)
        except Unavailable:
            # The store went away midway: the export stays claimed, and is built
            # again, by this hub or another, when its lease runs out.
            log.warning("export=%s interrupted: the store is unavailable", doc["_id"])
            return False
        except Exception as exc:
            # The type and the line, not the message nor the values: a record's
            # exception may quote its text.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "export=%s failed: %s at %s:%s",
                doc["_id"],
                exc.code if isinstance(exc, HubError) else type(exc).__name__,
                Path(frame.filename).name,
                frame.lineno,
            )
            done = await self.store.fail(doc["_id"], "the export could not be built")
            self._metrics.exports.labels("failed").inc()
        else:
            done = await self.store.finish(doc["_id"], files, counts)
            self._metrics.exports.labels("ready").inc()
            await self._audit.record(
                "system:exports",
                "export.built",
                patient_id=doc["patient_id"],
                export_id=doc["_id"],
                counts=counts,
            )
            log.info("export=%s built: %s", doc["_id"], counts)
        if done is not None and self._events is not None:
            data = {"export_id": done["_id"], "patient_id": done["patient_id"]}
            await self._events.emit("export.ready", done["_id"], {**data, "state": done["state"]})
        if done is not None and done["requested_by"] == done["patient_id"]:
            await self._notify(
                self._rooms.user(done["patient_id"]),
                Push.EXPORT_READY,
                {"export": self.to_wire(done, done["patient_id"])},
            )
        return True

    async def _build(self, doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        patient_id = doc["patient_id"]
        bundle_file = self.store.writer(f"{doc['_id']}.fhir.json")
        pdf = ConversationPdf(
            f"Your messages with {self._clinic_name}", self._clinic_name, self._font
        )
        bundle = fhir.BundleWriter(bundle_file.write, clock.now())
        try:
            await bundle.open()
            await self._conversations(patient_id, bundle, pdf)
            await self._appointments(patient_id, bundle)
            await self._consultations(patient_id, bundle)
            await bundle.close()
            await bundle_file.close()
        except BaseException:
            await bundle_file.abort()
            raise
        rendered = await asyncio.to_thread(pdf.output)
        pdf_file = self.store.writer(f"{doc['_id']}.pdf")
        try:
            await pdf_file.write(rendered)
            await pdf_file.close()
        except BaseException:
            await pdf_file.abort()
            raise
        files = {
            "bundle": {"file_id": bundle_file.file_id, "size": bundle_file.length},
            "pdf": {"file_id": pdf_file.file_id, "size": pdf_file.length},
        }
        return files, bundle.counts

    async def _conversations(
        self, patient_id: str, bundle: fhir.BundleWriter, pdf: ConversationPdf
    ) -> None:
        written = 0
        for conversation in await self.store.conversations_of(patient_id):
            names = await self._names(conversation["member_ids"])
            await bundle.add(
                fhir.thread(conversation, patient_id, names),
                fhir.full_url("conversation", conversation["_id"]),
            )
            others = [names.get(m, "") for m in conversation["member_ids"] if m != patient_id]
            pdf.conversation(
                f"Conversation with {', '.join(n for n in others if n) or 'the clinic'}"
            )
            async for message in self.store.messages_of(conversation["_id"]):
                if message.get("expired"):
                    continue
                written += 1
                if written % YIELD_EVERY == 0:
                    # About 0.6 ms of validation and rendering per message: let live
                    # traffic through between runs of them.
                    await asyncio.sleep(0)
                resource = fhir.communication(message, conversation, patient_id, names)
                files = None
                if not message.get("retracted_at") and message.get("attachments"):
                    files = [await self._bytes_of(a["id"]) for a in message["attachments"]]
                await bundle.add(resource, files=files)
                note = "retracted" if message.get("retracted_at") else ""
                note = note or ("edited" if message.get("edited_at") else "")
                body = message.get("body", "")
                for attachment in message.get("attachments") or ():
                    body += f"\n[attachment: {attachment['name']}]"
                pdf.message(
                    sender_label(message, patient_id, names), message["created_at"], body, note
                )

    async def _appointments(self, patient_id: str, bundle: fhir.BundleWriter) -> None:
        async for doc in self.store.appointments_of(patient_id):
            names = await self._names([doc["patient_id"], doc["doctor_id"]])
            await bundle.add(fhir.appointment(doc, names))

    async def _consultations(self, patient_id: str, bundle: fhir.BundleWriter) -> None:
        for consultation in await self.store.consultations_of(patient_id):
            names = await self._names([consultation["patient_id"], consultation["doctor_id"]])
            lines = [
                f"[{iso(s['at'])}] {s['speaker']}: {s['text']}"
                async for s in self.store.segments_of(consultation["_id"])
            ]
            if lines:
                at = consultation.get("started_at") or consultation.get("ended_at")
                await bundle.add(
                    fhir.document(
                        "transcript", consultation, "\n".join(lines), at or clock.now(), names
                    )
                )
            for note in await self.store.approved_notes(consultation["_id"]):
                await bundle.add(
                    fhir.document(
                        "note", consultation, note["approved_text"], note["approved_at"], names
                    )
                )

    async def _bytes_of(self, attachment_id: str) -> AsyncIterator[bytes] | None:
        """The stored bytes of an attachment, or None when there are none to give (the
        retention policy deleted them, or it never passed its checks)."""
        record = await self.store.attachment(attachment_id)
        if record is None or record.get("state") != AttachmentState.RELEASED.value:
            return None
        try:
            opened = await self._attachments.open_file(record["file_id"])
        except NotFound:
            return None
        return opened.read()

    async def _names(self, user_ids: list[str]) -> dict[str, str]:
        people = await self._directory.people(user_ids)
        return {u: p["name"] for u, p in people.items() if p["name"] != u}
