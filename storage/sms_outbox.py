"""The SMS outbox as the Celery workers use it: synchronous PyMongo, one method per
question or change. The hub's asynchronous side of the same collections is
``storage/sms.py``.

Every change of a row's state goes through ``forward`` (a row never moves back: a
late duplicate task cannot undo a send); the caps (one message SMS per conversation
window, a daily count per recipient) are claimed with unique ``_id``s, so two workers
racing for the same slot cannot both win.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from storage import names
from storage.sms import forward

OPEN_STATES = ["pending", "deferred", "sending"]


class SmsOutbox:
    def __init__(self, db: Database[Any]) -> None:
        self._db = db
        self._outbox = db[names.SMS_OUTBOX]

    # -- what the cause and the recipient say -------------------------------------------

    def notification(self, notification_id: str) -> dict[str, Any] | None:
        return self._db[names.NOTIFICATIONS].find_one({"_id": notification_id})

    def read_seq(self, conversation_id: str, user_id: str) -> int:
        """The highest seq the user has read in the conversation (0: none)."""
        cursor = self._db[names.READ_CURSORS].find_one(
            {"user_id": user_id, "conversation_id": conversation_id}
        )
        return int(cursor.get("seq", 0)) if cursor is not None else 0

    def contact(self, user_id: str) -> dict[str, Any]:
        return self._db[names.CONTACTS].find_one({"_id": user_id}) or {}

    def stopped(self, phone: str) -> bool:
        """Whether the number sent STOP (or Twilio reported it unsubscribed)."""
        return self._db[names.SMS_STOPS].find_one({"_id": phone}, {"_id": True}) is not None

    def record_stop(self, phone: str, at: datetime, source: str) -> None:
        self._db[names.SMS_STOPS].update_one(
            {"_id": phone}, {"$setOnInsert": {"at": at, "source": source}}, upsert=True
        )

    def mark_invalid(self, phone: str) -> None:
        """Every contact with this number: it cannot receive SMS."""
        self._db[names.CONTACTS].update_many({"phone": phone}, {"$set": {"invalid_phone": phone}})

    # -- the row of one cause -----------------------------------------------------------

    def open_row(
        self, outbox_id: str, user_id: str, kind: str, args: list[Any], now: datetime
    ) -> dict[str, Any]:
        """The outbox row of this cause, made ``pending`` if new. ``args`` are the
        task's, so that the hub's sweep can run the task again for a row left open."""
        try:
            row = self._outbox.find_one_and_update(
                {"_id": outbox_id},
                {
                    "$setOnInsert": {
                        "user_id": user_id,
                        "kind": kind,
                        "state": "pending",
                        "created_at": now,
                        "attempts": 0,
                        "args": args,
                    }
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            row = None
        return row or self._outbox.find_one({"_id": outbox_id}) or {}

    def defer(self, outbox_id: str, until: datetime) -> None:
        self._outbox.update_one(
            {"_id": outbox_id, **forward("sending")},
            {"$set": {"state": "deferred", "deferred_until": until}},
        )

    def claim_sending(self, row: dict[str, Any], phone: str, masked: str, now: datetime) -> bool:
        """Mark the row ``sending`` by this run; False when another run took it since
        ``row`` was read (a ``sending`` row is taken over only at the same attempt)."""
        claimed = self._outbox.find_one_and_update(
            {
                "_id": row["_id"],
                "state": {"$in": OPEN_STATES},
                "$or": [{"state": {"$ne": "sending"}}, {"sending_at": row.get("sending_at")}],
            },
            {
                "$set": {"state": "sending", "sending_at": now, "to": phone, "to_masked": masked},
                "$inc": {"attempts": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        return claimed is not None

    def refused(self, outbox_id: str, error: str) -> None:
        """Twilio refused the send (it did not go out): ``pending`` again."""
        self._outbox.update_one(
            {"_id": outbox_id, "state": "sending"},
            {"$set": {"state": "pending", "last_error": error}},
        )

    def note_error(self, outbox_id: str, error: str) -> None:
        """A send whose outcome is unknown: the row stays as it is, with the error."""
        self._outbox.update_one({"_id": outbox_id}, {"$set": {"last_error": error}})

    def fail(self, outbox_id: str, code: int | None, error: str) -> None:
        self._outbox.update_one(
            {"_id": outbox_id, **forward("failed")},
            {"$set": {"state": "failed", "error_code": code, "last_error": error}},
        )

    def record_sent(self, outbox_id: str, state: str, sid: str) -> None:
        self._outbox.update_one(
            {"_id": outbox_id, **forward(state)}, {"$set": {"state": state, "sid": sid}}
        )
        self._outbox.update_one(
            {"_id": outbox_id, "sid": {"$exists": False}}, {"$set": {"sid": sid}}
        )

    def skip(self, outbox_id: str, reason: str) -> None:
        self._outbox.update_one(
            {"_id": outbox_id, **forward("skipped")},
            {"$set": {"state": "skipped", "reason": reason}},
        )

    def counts(self, max_time_ms: int) -> dict[tuple[str, str], int]:
        """Rows by (state, reason); the reason is empty but for skipped rows."""
        pipeline = [{"$group": {"_id": {"state": "$state", "reason": "$reason"}, "n": {"$sum": 1}}}]
        return {
            (str(row["_id"].get("state")), str(row["_id"].get("reason") or "")): int(row["n"])
            for row in self._outbox.aggregate(pipeline, maxTimeMS=max_time_ms)
        }

    # -- caps ---------------------------------------------------------------------------

    def claim_window(
        self, conversation_id: str, user_id: str, outbox_id: str, now: datetime, seconds: float
    ) -> bool:
        """At most one message SMS per conversation and recipient per ``seconds``."""
        try:
            self._db[names.SMS_WINDOWS].update_one(
                {
                    "_id": f"{conversation_id}:{user_id}",
                    "$or": [{"until": {"$lte": now}}, {"outbox_id": outbox_id}],
                },
                {"$set": {"until": now + timedelta(seconds=seconds), "outbox_id": outbox_id}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # the window is held by another SMS
        return True

    def take_daily_slot(self, user_id: str, day: str, outbox_id: str, cap: int) -> bool:
        """Count this SMS against the recipient's ``day``; False once ``cap`` is hit.
        A redelivered task finds its SMS already counted."""
        try:
            self._db[names.SMS_DAILY].update_one(
                {
                    "_id": f"{user_id}:{day}",
                    "count": {"$lt": cap},
                    "outbox_ids": {"$ne": outbox_id},
                },
                {"$inc": {"count": 1}, "$push": {"outbox_ids": outbox_id}},
                upsert=True,
            )
        except DuplicateKeyError:
            slot = self._db[names.SMS_DAILY].find_one(
                {"_id": f"{user_id}:{day}", "outbox_ids": outbox_id}
            )
            return slot is not None
        return True
