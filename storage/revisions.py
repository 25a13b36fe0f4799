"""Edits and retractions of messages, with every earlier version kept.

What a change promises:

* Only the sender changes a message, and not one that was retracted or expired.
* The version it replaces is written to ``message_versions`` before the message
  changes, so the record always holds what members saw; versions are never updated
  or deleted except by the retention policy, together with their message.
* Two changes of one message at once: one wins, the other gets ``conflict`` (a version
  number on the message, checked by the update; the unique index on the versions).
* Each change takes the next number of its conversation's change counter, stored on
  the message (``change``): ``sync`` returns the messages changed after a device's
  last known number, so a device that was offline sees edits of messages it had.
* Each change is in the audit trail (``message.edited`` or ``message.retracted``: who,
  when, which message, the version it replaced and the one it made), written once the
  message changed; the text and the reason stay in ``message_versions``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from hub.core import clock
from hub.core.errors import Conflict, Forbidden, NotFound
from hub.core.records import AttachmentState, Message
from storage import names
from storage.audit import AuditLog
from storage.mongo import mongo_errors

AUDIT_ACTIONS = {"edit": "message.edited", "retract": "message.retracted"}


class MessageRevisions:
    def __init__(self, db: AsyncDatabase[Any], audit: AuditLog | None = None) -> None:
        self._audit = audit or AuditLog(db)
        self._messages = db[names.MESSAGES]
        self._versions = db[names.MESSAGE_VERSIONS]
        self._expiries = db[names.MESSAGE_EXPIRIES]
        self._conversations = db[names.CONVERSATIONS]
        self._attachments = db[names.ATTACHMENTS]

    async def edit(
        self, conversation_id: str, seq: int, sender_id: str, body: str, window: float
    ) -> tuple[Message, bool]:
        """Replace the body of the sender's message ``seq``, within ``window`` seconds of
        sending it; the message and whether it changed (the same body again is no
        change). NotFound, Forbidden (not the sender, window passed), Conflict."""
        doc = await self._changeable(conversation_id, seq, sender_id, window, "edited")
        if doc["body"] == body:
            return Message.from_doc(doc), False
        now = clock.now()
        changed = await self._change(
            doc, sender_id, "edit", None, {"body": body, "edited_at": now}, now
        )
        return changed, True

    async def retract(
        self,
        conversation_id: str,
        seq: int,
        sender_id: str,
        reason: str,
        window: float | None,
    ) -> tuple[Message, bool]:
        """Withdraw the sender's message: its body and attachments are no longer shown
        to anyone, its attachments no longer downloadable; ``window`` None for no time
        limit. The message and whether it changed (retracting twice is no change)."""
        with mongo_errors():
            doc = await self._messages.find_one({"conversation_id": conversation_id, "seq": seq})
        if doc is not None and doc.get("retracted_at") and doc["sender_id"] == sender_id:
            return Message.from_doc(doc), False
        doc = await self._changeable(conversation_id, seq, sender_id, window, "retracted")
        now = clock.now()
        changed = await self._change(
            doc,
            sender_id,
            "retract",
            reason,
            {"body": "", "attachments": [], "retracted_at": now},
            now,
        )
        attachment_ids = [a["id"] for a in doc.get("attachments") or ()]
        if attachment_ids:
            with mongo_errors():
                await self._attachments.update_many(
                    {"_id": {"$in": attachment_ids}},
                    {"$set": {"state": AttachmentState.RETRACTED.value}},
                )
        return changed, True

    async def versions(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every replaced version in the conversation, by seq then version (admins only)."""
        with mongo_errors():
            return (
                await self._versions.find({"conversation_id": conversation_id}, {"_id": False})
                .sort([("seq", 1), ("version", 1)])
                .to_list(None)
            )

    async def changed_since(
        self, conversation_id: str, after_change: int, upto_seq: int, limit: int
    ) -> tuple[list[Message], bool]:
        """Messages up to ``upto_seq`` changed after ``after_change``, by change number."""
        with mongo_errors():
            docs = (
                await self._messages.find(
                    {
                        "conversation_id": conversation_id,
                        "change": {"$gt": after_change},
                        "seq": {"$lte": upto_seq},
                    }
                )
                .sort("change", 1)
                .limit(limit + 1)
                .to_list(None)
            )
        return [Message.from_doc(d) for d in docs[:limit]], len(docs) > limit

    async def expired_since(
        self, conversation_id: str, after_change: int
    ) -> list[tuple[int, list[int]]]:
        """The retention policy's deletions in the conversation after change
        ``after_change``: ``(change, seqs)`` each, by change number."""
        with mongo_errors():
            docs = (
                await self._expiries.find(
                    {"conversation_id": conversation_id, "change": {"$gt": after_change}}
                )
                .sort("change", 1)
                .to_list(None)
            )
        return [(int(doc["change"]), [int(seq) for seq in doc["seqs"]]) for doc in docs]

    async def _changeable(
        self, conversation_id: str, seq: int, sender_id: str, window: float | None, what: str
    ) -> dict[str, Any]:
        with mongo_errors():
            doc = await self._messages.find_one({"conversation_id": conversation_id, "seq": seq})
        if doc is None or doc.get("expired"):
            raise NotFound("no such message")
        if doc["sender_id"] != sender_id:
            raise Forbidden(f"only its sender may have a message {what}")
        if doc.get("retracted_at"):
            raise Conflict("the message was retracted")
        sent = doc["created_at"]
        if window is not None and clock.now() - sent > timedelta(seconds=window):
            raise Forbidden(
                f"a message may be {what} within {round(window / 60)} minutes of sending it"
            )
        return dict(doc)

    async def _change(
        self,
        doc: dict[str, Any],
        actor_id: str,
        action: str,
        reason: str | None,
        fields: dict[str, Any],
        now: datetime,
    ) -> Message:
        version = int(doc.get("version", 1))
        with mongo_errors():
            counter = await self._conversations.find_one_and_update(
                {"_id": doc["conversation_id"]},
                {"$inc": {"last_change": 1}},
                projection={"last_change": True},
                return_document=ReturnDocument.AFTER,
            )
            if counter is None:
                raise NotFound("no such conversation")
            replaced = {
                "message_id": doc["_id"],
                "conversation_id": doc["conversation_id"],
                "seq": doc["seq"],
                "sender_id": doc["sender_id"],
                "version": version,
                "body": doc["body"],
                "attachments": doc.get("attachments") or [],
                "shown_from": doc.get("edited_at") or doc["created_at"],
                "replaced_at": now,
                "replaced_by": action,
                "actor_id": actor_id,
            }
            if reason:
                replaced["reason"] = reason
            try:
                await self._versions.insert_one(replaced)
            except DuplicateKeyError:
                raise Conflict("the message changed meanwhile: load it and try again") from None
            updated = await self._messages.find_one_and_update(
                {"_id": doc["_id"], "version": doc["version"] if "version" in doc else None},
                {"$set": {**fields, "version": version + 1, "change": counter["last_change"]}},
                return_document=ReturnDocument.AFTER,
            )
        if updated is None:
            raise Conflict("the message changed meanwhile: load it and try again")
        await self._audit.record(
            actor_id,
            AUDIT_ACTIONS[action],
            conversation_id=doc["conversation_id"],
            seq=doc["seq"],
            message_id=doc["_id"],
            replaced_version=version,
            version=version + 1,
        )
        return Message.from_doc(updated)
