"""Contacts, opt-outs and the SMS outbox, as the hub's HTTP routes see them.

The outbox state machine (one document per SMS cause, ``_id`` the cause):

    pending -> sending -> sent -> delivered | undelivered | failed
           \\-> skipped (with a reason)        \\-> failed

States only move forward: :data:`RANK` orders them, and every update is filtered
on a lower rank, so a late ``sent`` callback never overwrites ``delivered``.
The Celery worker (``workers/``) writes the same documents through PyMongo's
synchronous client.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from storage import names
from storage.mongo import mongo_errors

RANK = {
    "pending": 0,
    "deferred": 0,
    "sending": 1,
    "queued": 2,
    "sent": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "skipped": 4,
}
# States a row waits in while a task is meant to come back for it.
OPEN_STATES = ("pending", "deferred", "sending")
TWILIO_STATES = {"queued", "sending", "sent", "delivered", "undelivered", "failed"}


def forward(state: str) -> dict[str, Any]:
    """The filter clause that lets a document move to ``state`` only forward."""
    lower = [name for name, rank in RANK.items() if rank < RANK[state]]
    return {"state": {"$in": lower}}


class SmsStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._contacts = db[names.CONTACTS]
        self._stops = db[names.SMS_STOPS]
        self._outbox = db[names.SMS_OUTBOX]

    async def put_contact(
        self, user_id: str, phone: str, timezone: str, sms_opt_in: bool
    ) -> dict[str, Any]:
        """Create or replace a user's contact; a new phone number starts valid."""
        now = clock.now()
        with mongo_errors():
            await self._contacts.update_one(
                {"_id": user_id},
                {
                    "$set": {
                        "phone": phone,
                        "timezone": timezone,
                        "sms_opt_in": sms_opt_in,
                        "updated_at": now,
                    }
                },
                upsert=True,
            )
            # A number Twilio called invalid stays so until it changes.
            await self._contacts.update_one(
                {"_id": user_id, "invalid_phone": {"$exists": True, "$ne": phone}},
                {"$unset": {"invalid_phone": ""}},
            )
        return {
            "user_id": user_id,
            "phone": phone,
            "timezone": timezone,
            "sms_opt_in": sms_opt_in,
            "stopped": await self.stopped(phone),
        }

    async def handed_over_since(self, since: datetime) -> int:
        """SMS whose cause arose since ``since`` and that Twilio took (queued or later,
        whatever became of them): the operator's "SMS today"."""
        taken = [state for state, rank in RANK.items() if rank >= RANK["queued"]]
        taken.remove("skipped")
        with mongo_errors():
            return await self._outbox.count_documents(
                {"state": {"$in": taken}, "created_at": {"$gte": since}}
            )

    async def stopped(self, phone: str) -> bool:
        with mongo_errors():
            return await self._stops.find_one({"_id": phone}, {"_id": True}) is not None

    async def stop(self, phone: str, source: str) -> None:
        """Record that ``phone`` opted out (STOP, or Twilio's 21610); idempotent."""
        with mongo_errors():
            await self._stops.update_one(
                {"_id": phone},
                {"$setOnInsert": {"at": clock.now(), "source": source}},
                upsert=True,
            )

    async def start(self, phone: str) -> None:
        """The number opted back in (START, UNSTOP)."""
        with mongo_errors():
            await self._stops.delete_one({"_id": phone})

    async def record_status(self, sid: str, state: str, error_code: str | None) -> bool:
        """Move the outbox row of ``sid`` forward to ``state``; False if it was not newer."""
        update: dict[str, Any] = {"state": state, f"at.{state}": clock.now()}
        if error_code:
            update["error_code"] = error_code
        with mongo_errors():
            result = await self._outbox.update_one({"sid": sid, **forward(state)}, {"$set": update})
        return result.modified_count == 1

    async def claim_stuck(self, older_than: float, limit: int = 100) -> list[dict[str, Any]]:
        """Outbox rows that no task has moved for ``older_than`` seconds although one
        should have (pending, sending, or deferred past its time), each returned to
        one caller per ``older_than`` seconds: several hubs may sweep at once.

        Only rows that name their task's arguments (``args``) are returned.
        """
        now = clock.now()
        before = now - timedelta(seconds=older_than)
        stuck = {
            "args": {"$exists": True},
            "$and": [
                {"$or": [{"swept_at": {"$exists": False}}, {"swept_at": {"$lt": before}}]},
                {
                    "$or": [
                        {"state": "pending", "created_at": {"$lt": before}},
                        {"state": "sending", "sending_at": {"$lt": before}},
                        {"state": "deferred", "deferred_until": {"$lt": before}},
                    ]
                },
            ],
        }
        claimed: list[dict[str, Any]] = []
        with mongo_errors():
            while len(claimed) < limit:
                row = await self._outbox.find_one_and_update(
                    stuck,
                    {"$set": {"swept_at": now}},
                    projection={"_id": True, "kind": True, "args": True, "state": True},
                )
                if row is None:
                    break
                claimed.append(row)
        return claimed
