"""Exports of the record: the job of each (a lease while one hub builds it), its files in
GridFS, and the reads that feed it, each a cursor of modest batches so that a
record of any size streams through a hub in bounded memory.

Also the admin's audit export of one conversation: every document about it, staff
notes and replaced versions included.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from hub.core.errors import NotFound
from storage import names
from storage.attachments import GridFile, GridFileWriter
from storage.mongo import mongo_errors

READ_BATCH = 200  # documents per round trip of a streamed read


class ExportStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._db = db
        self._exports = db[names.EXPORTS]
        self._files = db[f"{names.EXPORT_FILES}.files"]
        self._chunks = db[f"{names.EXPORT_FILES}.chunks"]

    # -- the job -------------------------------------------------------------------------

    async def create(self, patient_id: str, requested_by: str) -> dict[str, Any]:
        doc = {
            "_id": f"exp_{secrets.token_hex(12)}",
            "patient_id": patient_id,
            "requested_by": requested_by,
            "state": "pending",
            "created_at": clock.now(),
        }
        with mongo_errors():
            await self._exports.insert_one(doc)
        return doc

    async def get(self, export_id: str) -> dict[str, Any]:
        with mongo_errors():
            doc = await self._exports.find_one({"_id": export_id})
        if doc is None:
            raise NotFound("no such export")
        return dict(doc)

    async def claim(self, lease: float) -> dict[str, Any] | None:
        """The oldest export waiting to be built (or left half-built by a hub that
        stopped), now this hub's for ``lease`` seconds."""
        now = clock.now()
        with mongo_errors():
            return await self._exports.find_one_and_update(
                {
                    "$or": [
                        {"state": "pending"},
                        {"state": "building", "lease_until": {"$lt": now}},
                    ]
                },
                {"$set": {"state": "building", "lease_until": now + timedelta(seconds=lease)}},
                sort=[("created_at", 1)],
                return_document=ReturnDocument.AFTER,
            )

    async def finish(
        self, export_id: str, files: dict[str, dict[str, Any]], counts: dict[str, int]
    ) -> dict[str, Any] | None:
        with mongo_errors():
            return await self._exports.find_one_and_update(
                {"_id": export_id, "state": "building"},
                {
                    "$set": {
                        "state": "ready",
                        "files": files,
                        "counts": counts,
                        "ready_at": clock.now(),
                    },
                    "$unset": {"lease_until": ""},
                },
                return_document=ReturnDocument.AFTER,
            )

    async def fail(self, export_id: str, reason: str) -> dict[str, Any] | None:
        with mongo_errors():
            return await self._exports.find_one_and_update(
                {"_id": export_id, "state": "building"},
                {"$set": {"state": "failed", "reason": reason}, "$unset": {"lease_until": ""}},
                return_document=ReturnDocument.AFTER,
            )

    async def expired(self, before: datetime) -> int:
        """Delete exports (and their files) made before ``before``."""
        with mongo_errors():
            docs = await self._exports.find({"created_at": {"$lt": before}}).to_list(None)
            if not docs:
                return 0  # the common case: no round trip more
            file_ids = [f["file_id"] for d in docs for f in (d.get("files") or {}).values()]
            await self._files.delete_many({"_id": {"$in": file_ids}})
            await self._chunks.delete_many({"files_id": {"$in": file_ids}})
            await self._exports.delete_many({"_id": {"$in": [d["_id"] for d in docs]}})
        return len(docs)

    # -- files -----------------------------------------------------------------------------

    def writer(self, filename: str) -> GridFileWriter:
        return GridFileWriter(self._files, self._chunks, ObjectId(), filename)

    async def open_file(self, file_id: Any) -> GridFile:
        with mongo_errors():
            doc = await self._files.find_one({"_id": file_id})
        if doc is None:
            raise NotFound("the export's file is gone")
        return GridFile(self._chunks, doc)

    # -- what a patient's export reads ------------------------------------------------------

    async def conversations_of(self, patient_id: str) -> list[dict[str, Any]]:
        with mongo_errors():
            return (
                await self._db[names.CONVERSATIONS]
                .find({"member_ids": patient_id})
                .sort("created_at", 1)
                .to_list(None)
            )

    async def messages_of(self, conversation_id: str) -> AsyncIterator[dict[str, Any]]:
        """The conversation's messages by seq (never staff notes: they live apart)."""
        async for doc in self._stream(names.MESSAGES, {"conversation_id": conversation_id}, "seq"):
            yield doc

    async def appointments_of(self, patient_id: str) -> AsyncIterator[dict[str, Any]]:
        async for doc in self._stream(names.APPOINTMENTS, {"patient_id": patient_id}, "start"):
            yield doc

    async def consultations_of(self, patient_id: str) -> list[dict[str, Any]]:
        with mongo_errors():
            return (
                await self._db[names.CONSULTATIONS]
                .find({"patient_id": patient_id})
                .sort("started_at", 1)
                .to_list(None)
            )

    async def segments_of(self, consultation_id: str) -> AsyncIterator[dict[str, Any]]:
        async for doc in self._stream(
            names.TRANSCRIPT, {"consultation_id": consultation_id}, "seq"
        ):
            yield doc

    async def approved_notes(self, consultation_id: str) -> list[dict[str, Any]]:
        """The assistant's notes the doctor approved (drafts never leave the clinic)."""
        with mongo_errors():
            return (
                await self._db[names.ASSISTANT_OUTPUTS]
                .find({"consultation_id": consultation_id, "approved_at": {"$exists": True}})
                .sort("approved_at", 1)
                .to_list(None)
            )

    async def attachment(self, attachment_id: str) -> dict[str, Any] | None:
        with mongo_errors():
            return await self._db[names.ATTACHMENTS].find_one({"_id": attachment_id})

    # -- the admin's audit export of a conversation ------------------------------------------

    async def conversation_record(
        self, conversation_id: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(kind, document)`` of everything about one conversation, kind by kind."""
        with mongo_errors():
            conversation = await self._db[names.CONVERSATIONS].find_one({"_id": conversation_id})
        if conversation is None:
            raise NotFound("no such conversation")
        yield "conversation", conversation
        mine = {"conversation_id": conversation_id}
        for kind, collection, order in (
            ("message", names.MESSAGES, "seq"),
            ("version", names.MESSAGE_VERSIONS, "seq"),
            ("staff_note", names.STAFF_NOTES, "seq"),
            ("attachment", names.ATTACHMENTS, "created_at"),
            ("read_cursor", names.READ_CURSORS, "seq"),
            ("routing", names.INBOX, "_id"),
            ("audit", names.AUDIT, "at"),
        ):
            query = {"_id": conversation_id} if collection == names.INBOX else mine
            async for doc in self._stream(collection, query, order):
                yield kind, doc

    async def _stream(
        self, collection: str, query: dict[str, Any], order: str
    ) -> AsyncIterator[dict[str, Any]]:
        with mongo_errors():
            cursor = self._db[collection].find(query, batch_size=READ_BATCH).sort(order, 1)
            async for doc in cursor:
                yield doc
