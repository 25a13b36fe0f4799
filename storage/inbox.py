"""Where a patient's conversation with the clinic is routed: its pool and its owner.

A conversation a patient opens with a pool has one routing document here, keyed by
the conversation's id. The conversation's own member set (the patient) never
changes, so it stays cacheable; who else may read and answer it is decided from this
document, read fresh each time: the members of its current pool and its owner.

One owner at a time: a claim is a conditional update on ``owner_id: null``, so of two
staff claiming at once, from any hub, exactly one wins.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from storage import names
from storage.mongo import mongo_errors


class InboxStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._routes = db[names.INBOX]

    async def route(self, conversation_id: str) -> dict[str, Any] | None:
        with mongo_errors():
            return await self._routes.find_one({"_id": conversation_id})

    async def open(self, conversation_id: str, patient_id: str, pool_id: str) -> dict[str, Any]:
        """The routing of a new pool conversation (unchanged if it exists)."""
        now = clock.now()
        with mongo_errors():
            doc = await self._routes.find_one_and_update(
                {"_id": conversation_id},
                {
                    "$setOnInsert": {
                        "patient_id": patient_id,
                        "pool_id": pool_id,
                        "owner_id": None,
                        "created_at": now,
                        "updated_at": now,
                    }
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        assert doc is not None
        return dict(doc)

    async def claim(self, conversation_id: str, user_id: str) -> tuple[bool, dict[str, Any] | None]:
        """Take an unowned conversation; (won, the routing after)."""
        now = clock.now()
        with mongo_errors():
            won = await self._routes.find_one_and_update(
                {"_id": conversation_id, "owner_id": None},
                {"$set": {"owner_id": user_id, "claimed_at": now, "updated_at": now}},
                return_document=ReturnDocument.AFTER,
            )
            if won is not None:
                return True, won
            return False, await self._routes.find_one({"_id": conversation_id})

    async def release(self, conversation_id: str, user_id: str) -> dict[str, Any] | None:
        """Give back an owned conversation to its pool; None unless ``user_id`` owns it."""
        with mongo_errors():
            return await self._routes.find_one_and_update(
                {"_id": conversation_id, "owner_id": user_id},
                {"$set": {"owner_id": None, "updated_at": clock.now()}},
                return_document=ReturnDocument.AFTER,
            )

    async def transfer(
        self,
        conversation_id: str,
        from_owner: str | None,
        to_user: str | None,
        to_pool: str | None,
    ) -> dict[str, Any] | None:
        """Hand the conversation on (to a person, or to another pool, unowned); None if
        ``from_owner`` is not its owner any more."""
        fields: dict[str, Any] = {"owner_id": to_user, "updated_at": clock.now()}
        if to_pool is not None:
            fields["pool_id"] = to_pool
        with mongo_errors():
            return await self._routes.find_one_and_update(
                {"_id": conversation_id, "owner_id": from_owner},
                {"$set": fields},
                return_document=ReturnDocument.AFTER,
            )

    async def owned_by(self, user_id: str, pool_id: str | None = None) -> list[str]:
        """The conversations ``user_id`` owns (in ``pool_id`` only, if given)."""
        query: dict[str, Any] = {"owner_id": user_id}
        if pool_id is not None:
            query["pool_id"] = pool_id
        with mongo_errors():
            docs = await self._routes.find(query, {"_id": 1}).to_list(None)
        return [doc["_id"] for doc in docs]

    async def count_in_pool(self, pool_id: str) -> int:
        with mongo_errors():
            return await self._routes.count_documents({"pool_id": pool_id})

    async def patient_wrote(self, conversation_id: str, at: datetime) -> None:
        """The patient's latest message: what the inbox's waiting time counts from."""
        with mongo_errors():
            await self._routes.update_one(
                {"_id": conversation_id},
                {"$set": {"waiting_since": at, "updated_at": at}},
            )

    async def staff_answered(self, conversation_id: str) -> dict[str, Any] | None:
        """The clinic answered: the waiting period ends. The routing as it was before
        (its ``waiting_since`` says how long the patient waited)."""
        with mongo_errors():
            before = await self._routes.find_one_and_update(
                {"_id": conversation_id},
                {"$set": {"waiting_since": None, "urgent": False, "escalated": 0}},
                return_document=ReturnDocument.BEFORE,
            )
        return None if before is None else dict(before)

    async def waiting(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Pool conversations whose patient waits for an answer, oldest first."""
        with mongo_errors():
            return await (
                self._routes.find({"waiting_since": {"$ne": None}})
                .sort("waiting_since", 1)
                .to_list(limit)
            )

    async def escalate(self, conversation_id: str, from_level: int, to_level: int) -> bool:
        """Move the escalation from ``from_level`` to ``to_level``; False if another
        hub moved it first (or the clinic answered meanwhile)."""
        level = {"escalated": from_level} if from_level else {"escalated": {"$in": [0, None]}}
        with mongo_errors():
            result = await self._routes.update_one(
                {"_id": conversation_id, "waiting_since": {"$ne": None}, **level},
                {"$set": {"escalated": to_level}},
            )
        return result.modified_count == 1

    async def mark_urgent(self, conversation_id: str) -> None:
        """An urgent patient message: first in the inbox until staff answer."""
        with mongo_errors():
            await self._routes.update_one({"_id": conversation_id}, {"$set": {"urgent": True}})

    async def listing(
        self, pool_id: str, state: str, user_id: str, limit: int = 200
    ) -> list[dict[str, Any]]:
        """A pool's conversations: ``unclaimed``, ``mine`` or ``all``; urgent ones
        first, then the longest waiting."""
        query: dict[str, Any] = {"pool_id": pool_id}
        if state == "unclaimed":
            query["owner_id"] = None
        elif state == "mine":
            query["owner_id"] = user_id
        with mongo_errors():
            docs = await self._routes.find(query).to_list(limit)
        never = datetime.max.replace(tzinfo=UTC)
        return sorted(
            docs,
            key=lambda d: (not d.get("urgent"), _aware(d.get("waiting_since")) or never),
        )


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
