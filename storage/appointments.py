"""The appointment projection and the once-only application of appointment events.

Each ``event_id`` takes effect once, whichever path delivered it and however many hub
processes saw it: the projection remembers the last event applied to it, notifications
have ids derived from the event, and ``appointment_events`` records every event handled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from pymongo import InsertOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ClientBulkWriteException

from hub.core import clock
from hub.core.appointment_event import AppointmentEvent, InvalidEvent, check_transition
from hub.core.errors import Unavailable
from hub.core.metrics import Metrics
from hub.core.wire import appointment_to_wire
from storage import names
from storage.conversations import ConversationRepository
from storage.mongo import DUPLICATE_KEY, mongo_errors

Outcome = Literal["applied", "duplicate", "stale"]
MAX_ATTEMPTS = 5


@dataclass
class Applied:
    outcome: Outcome
    kind: str = ""
    appointment: dict[str, Any] | None = None
    notifications: list[dict[str, Any]] = field(default_factory=list)


class AppointmentStore:
    def __init__(
        self,
        db: AsyncDatabase[Any],
        conversations: ConversationRepository,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = db.client
        self._metrics = metrics or Metrics()
        self._appointments = db[names.APPOINTMENTS]
        self._events = db[names.APPOINTMENT_EVENTS]
        self._appointments_ns = f"{db.name}.{names.APPOINTMENTS}"
        self._events_ns = f"{db.name}.{names.APPOINTMENT_EVENTS}"
        self._notifications_ns = f"{db.name}.{names.NOTIFICATIONS}"
        self._conversations = conversations

    async def get(self, appointment_id: str) -> dict[str, Any] | None:
        with mongo_errors():
            return await self._appointments.find_one({"_id": appointment_id})

    async def list_for(
        self, user_id: str, start_from: datetime, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """The user's appointments (as doctor or patient) starting at or after
        ``start_from``, soonest first, as clients see them; and whether there are more."""
        query = {
            "$or": [{"doctor_id": user_id}, {"patient_id": user_id}],
            "start": {"$gte": start_from},
        }
        with mongo_errors():
            docs = await (
                self._appointments.find(query)
                .sort([("start", 1), ("_id", 1)])
                .limit(limit + 1)
                .to_list(None)
            )
        return [appointment_to_wire(doc) for doc in docs[:limit]], len(docs) > limit

    async def apply(self, event: AppointmentEvent, now: datetime | None = None) -> Applied:
        """Apply ``event`` once; InvalidEvent if it can never apply, Unavailable to retry.

        An event older (``occurred_at``) than the stored state is ``stale``: recorded,
        not applied. Re-applying an event whose processing was interrupted completes it,
        including the doctor-patient conversation every applied event ensures.

        Two round trips: the dedupe and projection reads together, then one ordered
        bulk write (projection, conversation, notifications, event record). The
        projection op fails on a duplicate key when another writer got there first,
        which stops the bulk before anything else is written; the event is then
        judged again against what that writer stored.
        """
        now = now or clock.now()
        with mongo_errors():
            seen, stored = await asyncio.gather(
                self._events.find_one({"_id": event.event_id}, {"_id": True}),
                self._appointments.find_one({"_id": event.appointment_id}),
            )
            if seen:
                return Applied("duplicate")
            for attempt in range(MAX_ATTEMPTS):
                if attempt:
                    stored = await self._appointments.find_one({"_id": event.appointment_id})
                result, projection_op = self._judge(event, stored)
                ops: list[Any] = [projection_op] if projection_op is not None else []
                if result.outcome == "applied":
                    ops.append(
                        self._conversations.ensure_op(
                            {event.doctor_id, event.patient_id}, event.appointment_id, now
                        )
                    )
                first_notification = len(ops)
                notifications = self._notifications_of(event, result, now)
                ops += [
                    UpdateOne(
                        {"_id": doc["_id"]},
                        {"$setOnInsert": doc},
                        upsert=True,
                        namespace=self._notifications_ns,
                    )
                    for doc in notifications
                ]
                ops.append(
                    UpdateOne(
                        {"_id": event.event_id},
                        {
                            "$setOnInsert": {
                                "appointment_id": event.appointment_id,
                                "outcome": result.outcome,
                                "kind": result.kind,
                                "processed_at": now,
                            }
                        },
                        upsert=True,
                        namespace=self._events_ns,
                    )
                )
                try:
                    with self._metrics.mongo_write("appointment_event"):
                        written = await self._client.bulk_write(
                            ops, ordered=True, verbose_results=True
                        )
                except ClientBulkWriteException as exc:
                    errors = cast(list[dict[str, Any]], exc.write_errors or [])
                    if (
                        exc.error is None
                        and errors
                        and all(e.get("code") == DUPLICATE_KEY for e in errors)
                    ):
                        continue  # another writer got there first: judge again
                    raise Unavailable() from exc
                # Only the notifications this call inserted are new: each is emitted once.
                result.notifications = [
                    doc
                    for i, doc in enumerate(notifications)
                    if written.update_results[first_notification + i].upserted_id is not None
                ]
                return result
        raise Unavailable("appointment changed concurrently too often; retry")

    @staticmethod
    def _notifications_of(
        event: AppointmentEvent, result: Applied, now: datetime
    ) -> list[dict[str, Any]]:
        """One per recipient, with ids derived from the event (so each exists once)."""
        if result.outcome != "applied" or result.kind == "unchanged":
            return []
        return [
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

    def _judge(
        self, event: AppointmentEvent, stored: dict[str, Any] | None
    ) -> tuple[Applied, InsertOne[Any] | UpdateOne | None]:
        """What ``event`` does to ``stored``, and the op that writes it (None: no write)."""
        fields = {
            "status": event.status,
            "start": event.start_utc,
            "occurred_at": event.occurred_utc,
            "reason": event.reason,
            "last_event_id": event.event_id,
        }
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
            # Fails on the _id index if another writer created it meanwhile.
            return (
                Applied("applied", event.status, appointment_to_wire(doc)),
                InsertOne(doc, namespace=self._appointments_ns),
            )
        if (stored["doctor_id"], stored["patient_id"]) != (event.doctor_id, event.patient_id):
            raise InvalidEvent("doctor_id or patient_id differ from the appointment's")
        if stored.get("last_event_id") == event.event_id:  # interrupted earlier: finish it
            return Applied(
                "applied", stored.get("last_kind", ""), appointment_to_wire(stored)
            ), None
        if event.occurred_utc <= stored["occurred_at"]:
            return Applied("stale", "", appointment_to_wire(stored)), None
        kind = check_transition(stored["status"], event, stored["start"])
        update = {
            **fields,
            "previous_status": stored["status"],
            "previous_start": stored["start"] if kind == "rescheduled" else None,
            "last_kind": kind,
        }
        # Upsert on a filter that includes the last event applied: when another writer
        # moved the appointment on, nothing matches and the insert fails on _id.
        op = UpdateOne(
            {"_id": event.appointment_id, "last_event_id": stored.get("last_event_id")},
            {"$set": update},
            upsert=True,
            namespace=self._appointments_ns,
        )
        return Applied("applied", kind, appointment_to_wire({**stored, **update})), op
