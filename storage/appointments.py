"""The appointment projection and the once-only application of appointment events.

Each ``event_id`` takes effect once, whichever path delivered it and however many hub
processes saw it: the projection remembers the last event applied to it, notifications
have ids derived from the event, and ``appointment_events`` records every event handled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from hub.appointment_event import AppointmentEvent, InvalidEvent, check_transition
from hub.errors import Unavailable
from hub.protocol import iso
from storage import names
from storage.notifications import NotificationStore

Outcome = Literal["applied", "duplicate", "stale"]
MAX_ATTEMPTS = 5


@dataclass
class Applied:
    outcome: Outcome
    kind: str = ""
    appointment: dict[str, Any] | None = None
    notifications: list[dict[str, Any]] = field(default_factory=list)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def snapshot(doc: dict[str, Any]) -> dict[str, Any]:
    """The appointment as clients see it."""
    return {
        "id": doc["_id"],
        "doctor_id": doc["doctor_id"],
        "patient_id": doc["patient_id"],
        "status": doc["status"],
        "start": iso(_utc(doc["start"])),
        "previous_status": doc.get("previous_status"),
        "previous_start": iso(_utc(doc["previous_start"])) if doc.get("previous_start") else None,
        "reason": doc.get("reason"),
        "updated_at": iso(_utc(doc["occurred_at"])),
    }


class AppointmentStore:
    def __init__(self, db: AsyncDatabase, notifications: NotificationStore) -> None:
        self._appointments = db[names.APPOINTMENTS]
        self._events = db[names.APPOINTMENT_EVENTS]
        self._notifications = notifications

    async def get(self, appointment_id: str) -> dict[str, Any] | None:
        try:
            return await self._appointments.find_one({"_id": appointment_id})
        except PyMongoError as exc:
            raise Unavailable() from exc

    async def apply(self, event: AppointmentEvent, now: datetime | None = None) -> Applied:
        """Apply ``event`` once; InvalidEvent if it can never apply, Unavailable to retry.

        An event older (``occurred_at``) than the stored state is ``stale``: recorded,
        not applied. Re-applying an event whose processing was interrupted completes it.
        """
        now = now or datetime.now(UTC)
        try:
            if await self._events.find_one({"_id": event.event_id}, {"_id": True}):
                return Applied("duplicate")
            result = await self._update_projection(event)
            if result.outcome == "applied" and result.kind != "unchanged":
                assert result.appointment is not None
                result.notifications = await self._notifications.add(
                    [
                        {
                            "_id": f"{event.event_id}:{user_id}",
                            "user_id": user_id,
                            "type": f"appointment.{result.kind}",
                            "appointment": result.appointment,
                            "created_at": now,
                            "read_at": None,
                        }
                        for user_id in (event.patient_id, event.doctor_id)
                    ]
                )
            await self._events.update_one(
                {"_id": event.event_id},
                {"$setOnInsert": {
                    "appointment_id": event.appointment_id,
                    "outcome": result.outcome,
                    "kind": result.kind,
                    "processed_at": now,
                }},
                upsert=True,
            )
        except PyMongoError as exc:
            raise Unavailable() from exc
        return result

    async def _update_projection(self, event: AppointmentEvent) -> Applied:
        fields = {
            "status": event.status,
            "start": event.start_utc,
            "occurred_at": event.occurred_utc,
            "reason": event.reason,
            "last_event_id": event.event_id,
        }
        for _ in range(MAX_ATTEMPTS):
            stored = await self._appointments.find_one({"_id": event.appointment_id})
            if stored is None:
                doc = {
                    "_id": event.appointment_id,
                    "doctor_id": event.doctor_id,
                    "patient_id": event.patient_id,
                    "previous_status": None,
                    "previous_start": None,
                    "last_kind": event.status,
                    **fields,
                }
                try:
                    await self._appointments.insert_one(doc)
                except DuplicateKeyError:
                    continue  # another process created it meanwhile: judge against theirs
                return Applied("applied", event.status, snapshot(doc))
            if (stored["doctor_id"], stored["patient_id"]) != (event.doctor_id, event.patient_id):
                raise InvalidEvent("doctor_id or patient_id differ from the appointment's")
            if stored.get("last_event_id") == event.event_id:  # interrupted earlier: finish it
                return Applied("applied", stored.get("last_kind", ""), snapshot(stored))
            if event.occurred_utc <= _utc(stored["occurred_at"]):
                return Applied("stale", "", snapshot(stored))
            kind = check_transition(stored["status"], event, stored["start"])
            update = {
                **fields,
                "previous_status": stored["status"],
                "previous_start": stored["start"] if kind == "rescheduled" else None,
                "last_kind": kind,
            }
            changed = await self._appointments.find_one_and_update(
                {"_id": event.appointment_id, "last_event_id": stored.get("last_event_id")},
                {"$set": update},
                return_document=ReturnDocument.AFTER,
            )
            if changed is not None:
                return Applied("applied", kind, snapshot(changed))
        raise Unavailable("appointment changed concurrently too often; retry")
