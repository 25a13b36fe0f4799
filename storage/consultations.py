"""Consultations, their transcript, the assistant's outputs and the audit trail.

One consultation per appointment (``_id`` derived from it), so a second join, from
another device or after a reconnect, finds the same one. Transcript segments carry a
per-consultation ``seq`` taken from the consultation's counter; an append is
idempotent on the device's ``client_id``, and seqs only grow (a resend that loses the
race burns one, leaving a gap readers must tolerate).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, cast

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from hub.core import clock
from hub.core.errors import Conflict, NotFound, Unavailable
from hub.core.records import Consultation
from storage import names
from storage.mongo import mongo_errors


def consultation_id_for(appointment_id: str) -> str:
    return f"cons_{appointment_id}"


# The most segments read for one prompt: far more than a consultation produces.
TRANSCRIPT_LIMIT = 100_000


class Appended(NamedTuple):
    segment: dict[str, Any]
    # The consultation as the write left it; None when the segment was stored already.
    consultation: Consultation | None


def _from_doc(doc: dict[str, Any]) -> Consultation:
    return Consultation(
        consultation_id=doc["_id"],
        appointment_id=doc["appointment_id"],
        doctor_id=doc["doctor_id"],
        patient_id=doc["patient_id"],
        status=doc["status"],
        started_at=doc.get("started_at"),
        auto=bool(doc.get("auto")),
        summary=doc.get("summary", ""),
        summary_upto=int(doc.get("summary_upto", 0)),
    )


class ConsultationStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._consultations = db[names.CONSULTATIONS]
        self._segments = db[names.TRANSCRIPT]
        self._outputs = db[names.ASSISTANT_OUTPUTS]
        self._audit = db[names.AUDIT]

    async def open(self, appointment: dict[str, Any], by_doctor: bool) -> Consultation:
        """The appointment's consultation; the doctor's first join opens it (idempotent)."""
        consultation_id = consultation_id_for(appointment["_id"])
        now = clock.now()
        base = {
            "appointment_id": appointment["_id"],
            "doctor_id": appointment["doctor_id"],
            "patient_id": appointment["patient_id"],
            "last_seq": 0,
        }
        with mongo_errors():
            if by_doctor:
                await self._consultations.update_one(
                    {"_id": consultation_id, "status": "waiting"},
                    {"$set": {"status": "open", "started_at": now}},
                )
                doc = await self._upsert(
                    consultation_id, {**base, "status": "open", "started_at": now}
                )
            else:
                doc = await self._upsert(
                    consultation_id, {**base, "status": "waiting", "started_at": None}
                )
        return _from_doc(doc)

    async def _upsert(self, consultation_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        for _ in range(3):  # racing upserts of one _id: one may fail, then it exists
            try:
                doc = await self._consultations.find_one_and_update(
                    {"_id": consultation_id},
                    {"$setOnInsert": fields},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                if doc is not None:
                    return cast(dict[str, Any], doc)
            except DuplicateKeyError:
                continue
        raise Unavailable("could not open the consultation, try again")

    async def get(self, consultation_id: str) -> Consultation:
        with mongo_errors():
            doc = await self._consultations.find_one({"_id": consultation_id})
        if doc is None:
            raise NotFound("no such consultation")
        return _from_doc(doc)

    async def append(
        self, consultation_id: str, client_id: str, speaker: str, text: str, at: datetime | None
    ) -> Appended:
        """Store a segment once per ``client_id``; returns it, and the consultation when
        the segment is new.

        Conflict if the consultation is not open (ended, or not started).
        """
        now = clock.now()
        with mongo_errors():
            existing = await self._segments.find_one(
                {"consultation_id": consultation_id, "client_id": client_id}
            )
            if existing is not None:
                return Appended(existing, None)
            counter = await self._consultations.find_one_and_update(
                {"_id": consultation_id, "status": "open"},
                {"$inc": {"last_seq": 1}},
                return_document=ReturnDocument.AFTER,
            )
            if counter is None:
                raise Conflict("the consultation is not open")
            doc = {
                "consultation_id": consultation_id,
                "seq": counter["last_seq"],
                "client_id": client_id,
                "speaker": speaker,
                "text": text,
                "at": at or now,
                "created_at": now,
            }
            try:
                await self._segments.insert_one(doc)
            except DuplicateKeyError:  # the same client_id, sent twice at once
                again = await self._segments.find_one(
                    {"consultation_id": consultation_id, "client_id": client_id}
                )
                if again is None:
                    raise
                return Appended(again, None)
        return Appended(doc, _from_doc(counter))

    async def segments(
        self, consultation_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        with mongo_errors():
            return (
                await self._segments.find(
                    {"consultation_id": consultation_id, "seq": {"$gt": after_seq}}
                )
                .sort("seq", ASCENDING)
                .limit(limit)
                .to_list(length=limit)
            )

    async def end(self, consultation_id: str) -> bool:
        """Close it; False if it was not open (already ended: harmless)."""
        with mongo_errors():
            result = await self._consultations.update_one(
                {"_id": consultation_id, "status": "open"},
                {"$set": {"status": "ended", "ended_at": clock.now()}},
            )
        return result.modified_count == 1

    async def set_auto(self, consultation_id: str, auto: bool) -> None:
        with mongo_errors():
            await self._consultations.update_one({"_id": consultation_id}, {"$set": {"auto": auto}})

    async def claim_suggestion(self, consultation_id: str, upto_seq: int) -> bool:
        """Take the right to suggest on segments up to ``upto_seq``, once per process set."""
        with mongo_errors():
            result = await self._consultations.update_one(
                {
                    "_id": consultation_id,
                    "status": "open",
                    "suggested_upto": {"$not": {"$gte": upto_seq}},
                },
                {"$set": {"suggested_upto": upto_seq}},
            )
        return result.modified_count == 1

    async def suggested_upto(self, consultation_id: str) -> int:
        with mongo_errors():
            doc = await self._consultations.find_one(
                {"_id": consultation_id}, {"suggested_upto": True}
            )
        return int((doc or {}).get("suggested_upto", 0))

    async def save_summary(self, consultation_id: str, summary: str, upto_seq: int) -> None:
        """Keep the rolling summary of segments up to ``upto_seq`` (never move it back)."""
        with mongo_errors():
            await self._consultations.update_one(
                {"_id": consultation_id, "summary_upto": {"$not": {"$gte": upto_seq}}},
                {"$set": {"summary": summary, "summary_upto": upto_seq}},
            )

    async def record_output(self, output: dict[str, Any]) -> None:
        """An assistant output (or its failure), with model, prompt size and timings."""
        with mongo_errors():
            await self._outputs.insert_one(output)

    async def approve_note(
        self, consultation_id: str, request_id: str, doctor_id: str, text: str | None
    ) -> dict[str, Any]:
        """The doctor signs off a finished note draft, as it is or as they edited it (the
        draft's own text stays as the assistant wrote it); approving again replaces
        the approved text. NotFound if there is no finished note of that id."""
        now = clock.now()
        with mongo_errors():
            draft = await self._outputs.find_one(
                {
                    "_id": request_id,
                    "consultation_id": consultation_id,
                    "kind": "note",
                    "status": "done",
                }
            )
            if draft is None:
                raise NotFound("no finished note draft of that request_id")
            approved = {
                "approved_text": text if text is not None else draft.get("text", ""),
                "approved_at": now,
                "approved_by": doctor_id,
            }
            await self._outputs.update_one({"_id": request_id}, {"$set": approved})
        return {"request_id": request_id, **approved}

    async def audit(self, actor_id: str, action: str, consultation_id: str, **detail: Any) -> None:
        """Who did what to which consultation, when (transcript reads, assistant outputs)."""
        with mongo_errors():
            await self._audit.insert_one(
                {
                    "at": clock.now(),
                    "actor_id": actor_id,
                    "action": action,
                    "consultation_id": consultation_id,
                    "detail": detail,
                }
            )
