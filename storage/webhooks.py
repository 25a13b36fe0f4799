"""Webhook subscriptions of clinic back-ends, and the outbox of their deliveries.

Every delivery is a row in ``webhook_outbox`` before anything is sent (keyed by
subscription and event, so an event is queued once per subscription), claimed with a
lease by one hub at a time, and settled ``delivered`` or ``dead``. A dead row stays
until a replay puts it back in the queue.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from hub.core import clock
from storage import names
from storage.mongo import mongo_errors

LEASE = timedelta(seconds=60)  # a delivery a hub took longer than this is taken again


class WebhookStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._subscriptions = db[names.WEBHOOKS]
        self._outbox = db[names.WEBHOOK_OUTBOX]

    # -- subscriptions -------------------------------------------------------------------

    async def put(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        with mongo_errors():
            await self._subscriptions.replace_one(
                {"_id": name}, {**fields, "updated_at": clock.now()}, upsert=True
            )
            return dict(await self._subscriptions.find_one({"_id": name}) or {})

    async def subscription(self, name: str) -> dict[str, Any] | None:
        with mongo_errors():
            return await self._subscriptions.find_one({"_id": name})

    async def delete(self, name: str) -> bool:
        with mongo_errors():
            return (await self._subscriptions.delete_one({"_id": name})).deleted_count == 1

    async def all(self) -> list[dict[str, Any]]:
        with mongo_errors():
            return await self._subscriptions.find().sort("_id", 1).to_list(None)

    # -- the outbox ----------------------------------------------------------------------

    async def enqueue(self, rows: list[dict[str, Any]]) -> None:
        """Queue deliveries; one already queued (the same subscription and event) stays
        as it is."""
        now = clock.now()
        for row in rows:
            with mongo_errors():
                try:
                    await self._outbox.insert_one(
                        {**row, "state": "pending", "attempts": 0, "created_at": now, "due": now}
                    )
                except DuplicateKeyError:
                    pass

    async def claim_due(self) -> dict[str, Any] | None:
        """The next delivery whose time has come, this hub's for :data:`LEASE`."""
        now = clock.now()
        with mongo_errors():
            return await self._outbox.find_one_and_update(
                {"state": {"$in": ["pending", "sending"]}, "due": {"$lte": now}},
                {"$set": {"state": "sending", "due": now + LEASE}},
                sort=[("due", 1)],
                return_document=ReturnDocument.AFTER,
            )

    async def delivered(self, row_id: str, status: int) -> None:
        with mongo_errors():
            await self._outbox.update_one(
                {"_id": row_id, "state": "sending"},
                {
                    "$set": {"state": "delivered", "delivered_at": clock.now()},
                    "$inc": {"attempts": 1},
                    "$push": {"tries": {"at": clock.now(), "status": status}},
                },
            )

    async def failed(self, row_id: str, error: str, retry_at: datetime | None) -> None:
        """A try failed: again at ``retry_at``, or dead (None)."""
        change: dict[str, Any] = (
            {"state": "pending", "due": retry_at}
            if retry_at is not None
            else {"state": "dead", "dead_at": clock.now()}
        )
        with mongo_errors():
            await self._outbox.update_one(
                {"_id": row_id, "state": "sending"},
                {
                    "$set": {**change, "last_error": error},
                    "$inc": {"attempts": 1},
                    "$push": {"tries": {"at": clock.now(), "error": error}},
                },
            )

    async def dead(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        with mongo_errors():
            return (
                await self._outbox.find({"webhook": name, "state": "dead"})
                .sort("created_at", 1)
                .to_list(limit)
            )

    async def replay(self, name: str, row_ids: list[str] | None) -> int:
        """Put dead deliveries of ``name`` back in the queue (all, or these), due now,
        with a new day of retries."""
        query: dict[str, Any] = {"webhook": name, "state": "dead"}
        if row_ids is not None:
            query["_id"] = {"$in": row_ids}
        now = clock.now()
        with mongo_errors():
            result = await self._outbox.update_many(
                query,
                {
                    "$set": {"state": "pending", "due": now, "created_at": now},
                    "$unset": {"dead_at": ""},
                },
            )
        return result.modified_count

    async def get(self, row_id: str) -> dict[str, Any] | None:
        with mongo_errors():
            return await self._outbox.find_one({"_id": row_id})
