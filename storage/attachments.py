"""Attachments: a record per upload, the bytes in GridFS.

A record is written before the first byte (``uploading``) and turns ``pending`` only
once GridFS holds the whole file, so an upload cut off (the client gone, the hub
killed) is never half visible: it stays ``uploading`` until the sweep deletes it
and its chunks. A pending upload is checked by one hub at a time (a lease on the
record), and again by any hub once the lease runs out. An attachment belongs to at
most one message, recorded by that message's ``client_id`` before the message is
written, so a resend of the message finds it already its own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from bson import Binary, ObjectId
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from hub.core.errors import NotFound, Unavailable
from hub.core.records import Attachment, AttachmentState
from storage import names
from storage.mongo import mongo_errors

log = logging.getLogger(__name__)

CHUNK_BYTES = 255 * 1024  # GridFS's default chunk size
READ_BATCH_CHUNKS = 4  # chunks per round trip when reading: about 1 MB held at a time
UPLOAD_GIVEN_UP_AFTER = timedelta(hours=1)  # an `uploading` record this old was cut off


class GridFileWriter:
    """One GridFS file written as the GridFS specification lays it out (a document per
    chunk of ``chunk_size`` bytes, numbered from 0, then the file's document with its
    length), each chunk inserted as soon as it is full.

    PyMongo's own writer (``GridIn``) batches chunks until 48 MB are waiting, so an
    upload would sit whole in the hub's memory before its first insert; this one holds
    at most a chunk. The files are standard GridFS: any GridFS tool reads them.
    """

    def __init__(
        self,
        files: AsyncCollection[Any],
        chunks: AsyncCollection[Any],
        file_id: ObjectId,
        filename: str,
        chunk_size: int = CHUNK_BYTES,
    ) -> None:
        self._files = files
        self._chunks = chunks
        self.file_id = file_id
        self._filename = filename
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._next = 0
        self.length = 0

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.length += len(data)
        while len(self._buffer) >= self._chunk_size:
            await self._insert(bytes(self._buffer[: self._chunk_size]))
            del self._buffer[: self._chunk_size]

    async def close(self) -> None:
        """Write the last chunk, then the file's document: only now is the file whole."""
        if self._buffer:
            await self._insert(bytes(self._buffer))
            self._buffer.clear()
        with mongo_errors():
            await self._files.insert_one(
                {
                    "_id": self.file_id,
                    "length": self.length,
                    "chunkSize": self._chunk_size,
                    "uploadDate": clock.now(),
                    "filename": self._filename,
                }
            )

    async def abort(self) -> None:
        with mongo_errors():
            await self._chunks.delete_many({"files_id": self.file_id})

    async def _insert(self, data: bytes) -> None:
        with mongo_errors():
            await self._chunks.insert_one(
                {"files_id": self.file_id, "n": self._next, "data": Binary(data)}
            )
        self._next += 1


class GridFile:
    """One GridFS file open for reading, a few chunks at a time.

    PyMongo's reader (``GridOut``) walks the chunks with one cursor of the default
    batch size (101 documents, then 16 MB per batch), which brought a 20 MB file whole
    into memory for each download."""

    def __init__(self, chunks: AsyncCollection[Any], doc: dict[str, Any]) -> None:
        self._chunks = chunks
        self.file_id = doc["_id"]
        self.length = int(doc["length"])
        self.chunk_size = int(doc["chunkSize"])

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes from ``start`` to ``end`` (exclusive; default: the end), in pieces
        of at most one chunk. Raises Unavailable if a chunk is missing."""
        end = self.length if end is None else min(end, self.length)
        if start >= end:
            return
        first, last = start // self.chunk_size, (end - 1) // self.chunk_size
        with mongo_errors():
            cursor = self._chunks.find(
                {"files_id": self.file_id, "n": {"$gte": first, "$lte": last}},
                sort=[("n", 1)],
                batch_size=READ_BATCH_CHUNKS,
            )
            expected = first
            async for doc in cursor:
                if doc["n"] != expected:
                    raise Unavailable(f"GridFS file {self.file_id} lacks chunk {expected}")
                offset = expected * self.chunk_size
                data = bytes(doc["data"])
                yield data[max(0, start - offset) : min(len(data), end - offset)]
                expected += 1
        if expected != last + 1:
            raise Unavailable(f"GridFS file {self.file_id} lacks chunk {expected}")


class AttachmentStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._records = db[names.ATTACHMENTS]
        self._messages = db[names.MESSAGES]
        self._audit = db[names.AUDIT]
        self._file_docs = db[f"{names.ATTACHMENT_FILES}.files"]
        self._chunk_docs = db[f"{names.ATTACHMENT_FILES}.chunks"]

    # -- upload ----------------------------------------------------------------------

    async def begin_upload(
        self, attachment_id: str, conversation_id: str, uploader_id: str, name: str
    ) -> GridFileWriter:
        """Record the upload (``uploading``) and open its GridFS file for writing."""
        file_id = ObjectId()
        with mongo_errors():
            await self._records.insert_one(
                {
                    "_id": attachment_id,
                    "conversation_id": conversation_id,
                    "uploader_id": uploader_id,
                    "name": name,
                    "state": AttachmentState.UPLOADING.value,
                    "file_id": file_id,
                    "created_at": clock.now(),
                }
            )
        return GridFileWriter(self._file_docs, self._chunk_docs, file_id, attachment_id)

    async def finish_upload(
        self, attachment_id: str, name: str, content_type: str, size: int
    ) -> Attachment:
        """The whole file is in GridFS: the upload is ``pending`` its checks."""
        with mongo_errors():
            doc = await self._records.find_one_and_update(
                {"_id": attachment_id, "state": AttachmentState.UPLOADING.value},
                {
                    "$set": {
                        "state": AttachmentState.PENDING.value,
                        "name": name,
                        "type": content_type,
                        "size": size,
                        "uploaded_bytes": size,  # the quota's count, whatever is kept
                    }
                },
                return_document=ReturnDocument.AFTER,
            )
        if doc is None:
            raise LookupError(attachment_id)
        return Attachment.from_doc(doc)

    async def abort_upload(self, attachment_id: str, writer: GridFileWriter) -> None:
        """Forget an upload that was refused or cut off: its chunks and its record."""
        await writer.abort()
        with mongo_errors():
            await self._records.delete_one({"_id": attachment_id})

    # -- checks ----------------------------------------------------------------------

    async def claim_check(self, attachment_id: str | None, lease: float) -> Attachment | None:
        """Take the check of a pending upload (that one, or the oldest waiting) for
        ``lease`` seconds; None when there is none free."""
        now = clock.now()
        query: dict[str, Any] = {
            "state": AttachmentState.PENDING.value,
            "$or": [{"check_until": {"$exists": False}}, {"check_until": {"$lt": now}}],
        }
        if attachment_id is not None:
            query["_id"] = attachment_id
        with mongo_errors():
            doc = await self._records.find_one_and_update(
                query,
                {"$set": {"check_until": now + timedelta(seconds=lease)}, "$inc": {"checks": 1}},
                sort=[("created_at", 1)],
                return_document=ReturnDocument.AFTER,
            )
        return None if doc is None else Attachment.from_doc(doc)

    async def postpone_check(self, attachment_id: str, delay: float) -> None:
        with mongo_errors():
            await self._records.update_one(
                {"_id": attachment_id, "state": AttachmentState.PENDING.value},
                {"$set": {"check_until": clock.now() + timedelta(seconds=delay)}},
            )

    async def release(
        self,
        attachment: Attachment,
        *,
        file_id: Any,
        content_type: str,
        size: int,
        width: int | None = None,
        height: int | None = None,
        thumbnail_id: Any = None,
        name: str | None = None,
    ) -> Attachment | None:
        """Checked and clean: downloadable from now on. The upload's own bytes are
        deleted when the stored file is a new one (a re-encoded image)."""
        fields: dict[str, Any] = {
            "state": AttachmentState.RELEASED.value,
            "file_id": file_id,
            "type": content_type,
            "size": size,
            "checked_at": clock.now(),
        }
        if width is not None:
            fields.update(width=width, height=height, thumbnail_id=thumbnail_id)
        if name is not None:
            fields["name"] = name
        with mongo_errors():
            doc = await self._records.find_one_and_update(
                {"_id": attachment.attachment_id, "state": AttachmentState.PENDING.value},
                {"$set": fields, "$unset": {"check_until": ""}},
                return_document=ReturnDocument.AFTER,
            )
        if doc is None:  # another hub settled it meanwhile: ours are spare copies
            await self.delete_files([file_id, thumbnail_id])
            return None
        if file_id != attachment.file_id:
            await self.delete_files([attachment.file_id])
        return Attachment.from_doc(doc)

    async def reject(self, attachment: Attachment, reason: str, **audit: Any) -> Attachment | None:
        """Refused by a check: the bytes are deleted, the record says why, the audit
        trail keeps what was found."""
        with mongo_errors():
            doc = await self._records.find_one_and_update(
                {"_id": attachment.attachment_id, "state": AttachmentState.PENDING.value},
                {
                    "$set": {
                        "state": AttachmentState.REJECTED.value,
                        "reason": reason,
                        "checked_at": clock.now(),
                    },
                    "$unset": {"check_until": "", "file_id": ""},
                },
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                return None
            await self._audit.insert_one(
                {
                    "at": clock.now(),
                    "actor_id": "hub",
                    "action": "attachment.rejected",
                    "attachment_id": attachment.attachment_id,
                    "conversation_id": attachment.conversation_id,
                    "detail": {"reason": reason, "size": attachment.size, **audit},
                }
            )
        await self.delete_files([attachment.file_id])
        return Attachment.from_doc(doc)

    # -- files -----------------------------------------------------------------------

    async def store_file(self, chunks: AsyncIterator[bytes], filename: str) -> tuple[Any, int]:
        """Write a new GridFS file; its id and size."""
        writer = GridFileWriter(self._file_docs, self._chunk_docs, ObjectId(), filename)
        try:
            async for chunk in chunks:
                await writer.write(chunk)
            await writer.close()
        except BaseException:
            await writer.abort()
            raise
        return writer.file_id, writer.length

    async def open_file(self, file_id: Any) -> GridFile:
        """A whole GridFS file (NotFound for one never finished)."""
        with mongo_errors():
            doc = await self._file_docs.find_one({"_id": file_id})
        if doc is None:
            raise NotFound("the attachment's file is gone")
        return GridFile(self._chunk_docs, doc)

    async def delete_files(self, file_ids: list[Any]) -> None:
        """Delete GridFS files: the file's document first (it is no longer listed),
        then its chunks; also the chunks of files never finished."""
        ids = [file_id for file_id in file_ids if file_id is not None]
        if not ids:
            return
        with mongo_errors():
            await self._file_docs.delete_many({"_id": {"$in": ids}})
            await self._chunk_docs.delete_many({"files_id": {"$in": ids}})

    # -- reads and messages ----------------------------------------------------------

    async def get(self, attachment_id: str) -> Attachment | None:
        with mongo_errors():
            doc = await self._records.find_one({"_id": attachment_id})
        return None if doc is None else Attachment.from_doc(doc)

    async def get_many(self, attachment_ids: list[str]) -> dict[str, Attachment]:
        with mongo_errors():
            docs = await self._records.find({"_id": {"$in": attachment_ids}}).to_list(None)
        return {doc["_id"]: Attachment.from_doc(doc) for doc in docs}

    async def attach(self, attachment_ids: list[str], uploader_id: str, client_id: str) -> int:
        """Mark released attachments of ``uploader_id`` as the message ``client_id``'s,
        unless another message has them; how many are now that message's."""
        with mongo_errors():
            await self._records.update_many(
                {
                    "_id": {"$in": attachment_ids},
                    "uploader_id": uploader_id,
                    "state": AttachmentState.RELEASED.value,
                    "attached": None,
                },
                {"$set": {"attached": {"client_id": client_id, "at": clock.now()}}},
            )
            return await self._records.count_documents(
                {"_id": {"$in": attachment_ids}, "attached.client_id": client_id}
            )

    async def confirm(self, attachment_ids: list[str], client_id: str) -> None:
        """The message ``client_id`` is stored: its attachments are no orphans."""
        with mongo_errors():
            await self._records.update_many(
                {"_id": {"$in": attachment_ids}, "attached.client_id": client_id},
                {"$set": {"carried": True}},
            )

    async def detach(self, attachment_ids: list[str], client_id: str) -> None:
        """Undo :meth:`attach` for a message that will not be written."""
        with mongo_errors():
            await self._records.update_many(
                {"_id": {"$in": attachment_ids}, "attached.client_id": client_id},
                {"$unset": {"attached": ""}},
            )

    # -- deletion ----------------------------------------------------------------------

    async def uploaded_since(self, uploader_id: str, since: datetime) -> int:
        """Bytes ``uploader_id`` uploaded since ``since``, as they came in (an image is
        kept re-encoded, at another size; uploads still streaming count once they
        finish, rejected ones count too)."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"uploader_id": uploader_id, "created_at": {"$gte": since}}},
            {"$group": {"_id": None, "bytes": {"$sum": "$uploaded_bytes"}}},
        ]
        with mongo_errors():
            rows = await (await self._records.aggregate(pipeline)).to_list(None)
        return int(rows[0]["bytes"]) if rows else 0

    async def take_unsent(self, attachment_id: str, uploader_id: str) -> Attachment | None:
        """Remove the record of an upload of ``uploader_id`` that no message carries
        (checked and removed in one step, so a send cannot take it meanwhile); None if
        there is no such upload. Its bytes are the caller's to delete."""
        with mongo_errors():
            doc = await self._records.find_one_and_delete(
                {
                    "_id": attachment_id,
                    "uploader_id": uploader_id,
                    "attached": None,
                    "state": {"$ne": AttachmentState.UPLOADING.value},
                }
            )
        return None if doc is None else Attachment.from_doc(doc)

    async def delete(self, attachments: list[Attachment]) -> None:
        """Delete attachments: bytes first, then the records."""
        await self.delete_files(
            [f for a in attachments for f in (a.file_id, a.thumbnail_id) if f is not None]
        )
        with mongo_errors():
            await self._records.delete_many(
                {"_id": {"$in": [a.attachment_id for a in attachments]}}
            )

    async def orphans(
        self,
        attached_within: float,
        cut_off_after: timedelta = UPLOAD_GIVEN_UP_AFTER,
        limit: int = 500,
    ) -> list[Attachment]:
        """Uploads to delete: cut off (``uploading`` for ``cut_off_after``), or older than
        ``attached_within`` seconds and carried by no stored message (never attached,
        rejected, or marked for a message that was never written). Attachments of
        stored messages are ``carried`` and never looked at again."""
        now = clock.now()
        with mongo_errors():
            docs = await self._records.find(
                {
                    "$or": [
                        {
                            "state": AttachmentState.UPLOADING.value,
                            "created_at": {"$lt": now - cut_off_after},
                        },
                        {
                            "state": {"$ne": AttachmentState.UPLOADING.value},
                            "carried": {"$ne": True},
                            "created_at": {"$lt": now - timedelta(seconds=attached_within)},
                        },
                    ]
                }
            ).to_list(limit)
            found = []
            for doc in docs:
                attached = doc.get("attached")
                if attached and doc["state"] == AttachmentState.RELEASED.value:
                    carried = await self._messages.find_one(
                        {
                            "conversation_id": doc["conversation_id"],
                            "sender_id": doc["uploader_id"],
                            "client_id": attached["client_id"],
                        },
                        projection={"_id": 1},
                    )
                    if carried is not None:  # stored, but the hub stopped before confirming
                        await self._records.update_one(
                            {"_id": doc["_id"]}, {"$set": {"carried": True}}
                        )
                        continue
                found.append(Attachment.from_doc(doc))
        return found
