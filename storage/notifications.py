"""Notifications: one document per recipient, read by notification:list, marked by ack."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from hub.core.errors import Forbidden
from hub.core.wire import notification_to_wire
from storage import names
from storage.mongo import mongo_errors


class NotificationStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._notifications = db[names.NOTIFICATIONS]

    async def list_for(
        self, user_id: str, before: str | None, limit: int, unread_only: bool
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """Newest first, ``limit`` of them after the cursor ``before`` (a notification id).

        Returns the page, the user's unread count, and whether older ones exist.
        """
        query: dict[str, Any] = {"user_id": user_id}
        if unread_only:
            query["read_at"] = None
        with mongo_errors():
            if before is not None:
                anchor = await self._notifications.find_one(
                    {"_id": before, "user_id": user_id}, {"created_at": True}
                )
                if anchor is not None:
                    query["$or"] = [
                        {"created_at": {"$lt": anchor["created_at"]}},
                        {"created_at": anchor["created_at"], "_id": {"$lt": before}},
                    ]
            docs = (
                await self._notifications.find(query)
                .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
                .limit(limit + 1)
                .to_list(length=limit + 1)
            )
            unread = await self._notifications.count_documents(
                {"user_id": user_id, "read_at": None}
            )
        return [notification_to_wire(d) for d in docs[:limit]], unread, len(docs) > limit

    async def ack(self, user_id: str, notification_ids: list[str], now: datetime) -> list[str]:
        """Mark the caller's notifications read; Forbidden if any belongs to someone else.

        Idempotent: acking an already read notification changes nothing. Returns the
        ids that were unread (two devices acking at once may both list one).
        """
        with mongo_errors():
            owners = await self._notifications.find(
                {"_id": {"$in": notification_ids}}, {"user_id": True, "read_at": True}
            ).to_list(length=None)
            if any(doc["user_id"] != user_id for doc in owners):
                raise Forbidden("a notification is not yours")
            unread = [doc["_id"] for doc in owners if doc.get("read_at") is None]
            if unread:
                await self._notifications.update_many(
                    {"_id": {"$in": unread}, "user_id": user_id, "read_at": None},
                    {"$set": {"read_at": now}},
                )
        return unread

    async def escalated(
        self,
        user_id: str,
        conversation_id: str,
        pool: dict[str, Any],
        patient_id: str,
        level: int,
        now: datetime,
    ) -> dict[str, Any] | None:
        """The notification that a pool conversation waits too long; None if this
        recipient has it already (once per conversation, level and waiting period)."""
        doc = {
            "_id": f"escalated:{conversation_id}:{level}:{user_id}:{int(now.timestamp()) // 86400}",
            "user_id": user_id,
            "type": "inbox.escalated",
            "conversation": {
                "id": conversation_id,
                "pool_id": pool["_id"],
                "pool_name": pool.get("name"),
                "patient_id": patient_id,
                "level": level,
            },
            "created_at": now,
            "read_at": None,
        }
        with mongo_errors():
            try:
                await self._notifications.insert_one(doc)
            except DuplicateKeyError:
                return None
        return notification_to_wire(doc)

    async def unread(self, notification_id: str) -> dict[str, Any] | None:
        """The notification if it is still unread (for the SMS fallback's re-check)."""
        with mongo_errors():
            return await self._notifications.find_one({"_id": notification_id, "read_at": None})
