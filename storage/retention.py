"""What the retention policy deletes, a batch at a time, and the legal holds that stop it.

Each ``expire_*`` method deletes one batch (at most ``batch`` documents, oldest
first) of what was created within a window of dates and is not under a hold, and
returns how many it took; the caller repeats until a batch comes back short, then
moves to the next window. Windows keep each query's cost to its batch on a store
that does not stop an index range scan at the query's limit (SecantusDB reads the
whole range, then cuts). Nothing here decides periods: that is the policy's
(hub/record/retention.py).

A conversation's newest message is never deleted outright: it stays as a stub with
its seq and nothing else (``expired``), because the next message's seq is allocated
from the highest one stored and a seq, once seen by a device, is never reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from hub.core import clock
from hub.core.records import Attachment, AttachmentState
from storage import names
from storage.attachments import AttachmentStore
from storage.messages import last_seqs
from storage.mongo import mongo_errors
from storage.sms_outbox import OPEN_STATES

RETENTION_JOB = "retention"
POLICY_ID = "retention"
# Outbox rows still at work are never deleted, whatever their age.
OPEN_ROWS = {
    names.SMS_OUTBOX: OPEN_STATES,
    names.PUSH_OUTBOX: ["pending", "sending", "deferred"],
    names.WEBHOOK_OUTBOX: ["pending", "sending", "dead"],  # dead ones wait for a replay
}
# A range of ``created_at``: ``{"$gte": since, "$lt": before}``.
Window = dict[str, datetime]


@dataclass(frozen=True, slots=True)
class Held:
    """What a retention run must not touch, read once at its start."""

    patient_ids: frozenset[str]
    conversation_ids: frozenset[str]  # held themselves, or with a held patient in them
    consultation_ids: frozenset[str]  # of held patients
    holds: int  # how many holds there are
    # Per message collection, each conversation's highest seq, read once per run: a
    # seq only grows, so a message below it stays below it while the run goes on.
    newest: dict[str, dict[str, int]] = field(default_factory=dict)


class RetentionStore:
    def __init__(self, db: AsyncDatabase[Any], attachments: AttachmentStore) -> None:
        self._db = db
        self._holds = db[names.HOLDS]
        self._jobs = db[names.JOBS]
        self._clinic = db[names.CLINIC]
        self._attachments = attachments

    # -- legal holds -------------------------------------------------------------------

    async def put_hold(
        self,
        hold_id: str,
        patient_id: str | None,
        conversation_id: str | None,
        reason: str,
        placed_by: str,
    ) -> dict[str, Any]:
        """Place (or change) a hold; it stops deletion from the next batch on."""
        doc = {
            "_id": hold_id,
            "patient_id": patient_id,
            "conversation_id": conversation_id,
            "reason": reason,
            "placed_by": placed_by,
            "placed_at": clock.now(),
        }
        with mongo_errors():
            await self._holds.replace_one({"_id": hold_id}, doc, upsert=True)
        return doc

    async def lift_hold(self, hold_id: str) -> dict[str, Any] | None:
        """Lift a hold; the hold as it was, None if there was none."""
        with mongo_errors():
            return await self._holds.find_one_and_delete({"_id": hold_id})

    async def holds(self) -> list[dict[str, Any]]:
        with mongo_errors():
            return await self._holds.find().sort("placed_at", 1).to_list(None)

    async def held(self) -> Held:
        with mongo_errors():
            holds = await self._holds.find().to_list(None)
            patients = {h["patient_id"] for h in holds if h.get("patient_id")}
            conversations = {h["conversation_id"] for h in holds if h.get("conversation_id")}
            consultations: set[str] = set()
            if patients:
                async for doc in self._db[names.CONVERSATIONS].find(
                    {"member_ids": {"$in": sorted(patients)}}, {"_id": True}
                ):
                    conversations.add(doc["_id"])
                async for doc in self._db[names.CONSULTATIONS].find(
                    {"patient_id": {"$in": sorted(patients)}}, {"_id": True}
                ):
                    consultations.add(doc["_id"])
        return Held(
            frozenset(patients), frozenset(conversations), frozenset(consultations), len(holds)
        )

    # -- the clinic's policy, and one run at a time -------------------------------------

    async def policy(self) -> dict[str, int | None]:
        """Days per kind as the clinic's back-end set them (kinds it did not set are absent)."""
        with mongo_errors():
            doc = await self._clinic.find_one({"_id": POLICY_ID})
        return dict((doc or {}).get("days") or {})

    async def put_policy(self, days: dict[str, int | None]) -> dict[str, int | None]:
        with mongo_errors():
            await self._clinic.update_one(
                {"_id": POLICY_ID},
                {"$set": {**{f"days.{k}": v for k, v in days.items()}, "at": clock.now()}},
                upsert=True,
            )
        return await self.policy()

    async def claim_run(self, every: float) -> bool:
        """Take the next run, unless one ran (or is running) in the last ``every`` seconds
        on any hub."""
        now = clock.now()
        with mongo_errors():
            try:
                await self._jobs.update_one(
                    {"_id": RETENTION_JOB, "until": {"$lt": now}},
                    {"$set": {"until": now + timedelta(seconds=every), "started_at": now}},
                    upsert=True,
                )
            except DuplicateKeyError:  # the slot exists and is not over: another hub's
                return False
        return True

    # -- one batch of each kind --------------------------------------------------------

    async def expire_messages(
        self, collection: str, within: Window, held: Held, batch: int
    ) -> tuple[int, int]:
        """Messages (or staff notes) sent ``within`` the window, with their versions:
        ``(messages taken, documents deleted or emptied)``, versions counted in the
        second."""
        store = self._db[collection]
        with mongo_errors():
            docs = (
                await store.find(
                    {
                        "created_at": within,
                        "expired": {"$ne": True},
                        "conversation_id": {"$nin": sorted(held.conversation_ids)},
                    },
                    {"conversation_id": True, "seq": True},
                )
                .sort("created_at", 1)
                .limit(batch)
                .to_list(None)
            )
            if not docs:
                return 0, 0
            await self._newest_seqs(collection, {d["conversation_id"] for d in docs}, held)
            newest = held.newest[collection]
            stubs = [d for d in docs if d["seq"] >= newest.get(d["conversation_id"], 0)]
            gone = [d for d in docs if d["seq"] < newest.get(d["conversation_id"], 0)]
            if collection == names.MESSAGES:  # staff notes reach no device through sync
                await self._tell_devices(gone, stubs)
            if gone:
                await store.delete_many({"_id": {"$in": [d["_id"] for d in gone]}})
            if stubs:
                await store.update_many(
                    {"_id": {"$in": [d["_id"] for d in stubs]}},
                    {
                        "$set": {"expired": True, "body": ""},
                        "$unset": {
                            "attachments": "",
                            "sender_name": "",
                            "urgent": "",
                            "edited_at": "",
                            "retracted_at": "",
                        },
                    },
                )
            versions = await self._db[names.MESSAGE_VERSIONS].delete_many(
                {"message_id": {"$in": [d["_id"] for d in docs]}}
            )
        return len(docs), len(docs) + versions.deleted_count

    async def _tell_devices(self, gone: list[dict[str, Any]], stubs: list[dict[str, Any]]) -> None:
        """What members' devices learn at their next ``sync``: per conversation, one
        change number for this batch; the seqs deleted go to ``message_expiries``
        under it, and the messages emptied to stubs carry it. Written before the
        messages change, so a device never misses a deletion that happened."""
        deleted: dict[str, list[int]] = {}
        emptied: dict[str, list[Any]] = {}
        for doc in gone:
            deleted.setdefault(doc["conversation_id"], []).append(int(doc["seq"]))
        for doc in stubs:
            emptied.setdefault(doc["conversation_id"], []).append(doc["_id"])
        now = clock.now()
        for conversation_id in sorted(deleted.keys() | emptied.keys()):
            counter = await self._db[names.CONVERSATIONS].find_one_and_update(
                {"_id": conversation_id},
                {"$inc": {"last_change": 1}},
                projection={"last_change": True},
                return_document=ReturnDocument.AFTER,
            )
            change = int(counter["last_change"]) if counter else 0
            if conversation_id in deleted:
                await self._db[names.MESSAGE_EXPIRIES].insert_one(
                    {
                        "conversation_id": conversation_id,
                        "change": change,
                        "seqs": sorted(deleted[conversation_id]),
                        "at": now,
                    }
                )
            if conversation_id in emptied:
                await self._db[names.MESSAGES].update_many(
                    {"_id": {"$in": emptied[conversation_id]}}, {"$set": {"change": change}}
                )

    async def _newest_seqs(self, collection: str, conversation_ids: set[str], held: Held) -> None:
        known = held.newest.setdefault(collection, {})
        missing = sorted(conversation_ids - known.keys())
        if missing:
            found = await last_seqs(self._db[collection], missing)
            known.update({c: found.get(c, 0) for c in missing})

    async def expire_attachments(self, within: Window, held: Held, batch: int) -> int:
        """Attachments uploaded ``within`` the window: records and GridFS files."""
        with mongo_errors():
            docs = (
                await self._db[names.ATTACHMENTS]
                .find(
                    {
                        "created_at": within,
                        "state": {"$ne": AttachmentState.UPLOADING.value},
                        "conversation_id": {"$nin": sorted(held.conversation_ids)},
                    }
                )
                .sort("created_at", 1)
                .limit(batch)
                .to_list(None)
            )
        await self._attachments.delete([Attachment.from_doc(d) for d in docs])
        return len(docs)

    async def expire_transcripts(self, within: Window, held: Held, batch: int) -> int:
        """Transcript segments stored ``within`` the window."""
        return await self._delete_batch(
            self._db[names.TRANSCRIPT],
            {"created_at": within, "consultation_id": {"$nin": sorted(held.consultation_ids)}},
            batch,
        )

    async def clear_summaries(self, cutoff: datetime, held: Held) -> None:
        """The rolling summaries (drawn from transcripts) of consultations ended before
        ``cutoff``."""
        with mongo_errors():
            await self._db[names.CONSULTATIONS].update_many(
                {
                    "ended_at": {"$lt": cutoff},
                    "summary": {"$exists": True},
                    "_id": {"$nin": sorted(held.consultation_ids)},
                },
                {"$unset": {"summary": ""}},
            )

    async def expire_assistant(self, within: Window, held: Held, batch: int) -> int:
        return await self._delete_batch(
            self._db[names.ASSISTANT_OUTPUTS],
            {"created_at": within, "consultation_id": {"$nin": sorted(held.consultation_ids)}},
            batch,
        )

    async def expire_notifications(
        self, collection: str, within: Window, held: Held, batch: int
    ) -> int:
        """Notifications, or the settled rows of the SMS or push outbox (with the SMS
        bodies), created ``within`` the window."""
        query: dict[str, Any] = {
            "created_at": within,
            "user_id": {"$nin": sorted(held.patient_ids)},
        }
        if collection in OPEN_ROWS:
            query["state"] = {"$nin": OPEN_ROWS[collection]}
        return await self._delete_batch(self._db[collection], query, batch)

    async def oldest(self, collection: str, before: datetime | None = None) -> datetime | None:
        """The oldest ``created_at`` in a collection (before ``before``; stubs of messages
        aside)."""
        query: dict[str, Any] = {"created_at": {"$lt": before} if before else {"$exists": True}}
        with mongo_errors():
            doc = await self._db[collection].find_one(
                {**query, "expired": {"$ne": True}}, {"created_at": True}, sort=[("created_at", 1)]
            )
        return None if doc is None else doc["created_at"]

    @staticmethod
    async def _delete_batch(
        collection: AsyncCollection[Any], query: dict[str, Any], batch: int
    ) -> int:
        with mongo_errors():
            ids = [
                d["_id"]
                for d in await collection.find(query, {"_id": True})
                .sort("created_at", 1)
                .limit(batch)
                .to_list(None)
            ]
            if ids:
                await collection.delete_many({"_id": {"$in": ids}})
        return len(ids)
