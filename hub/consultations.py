"""Live consultations: who may join, and who may speak for one.

Access comes from the appointment projection: only the appointment's doctor and
patient join, and not once it is cancelled, completed or a no-show. Only the doctor
appends transcript, asks the assistant, configures it and ends the consultation.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hub.errors import Conflict, Forbidden, NotFound
from storage.appointments import AppointmentStore
from storage.consultations import TRANSCRIPT_LIMIT, Consultation, ConsultationStore

CLOSED_APPOINTMENTS = frozenset({"cancelled", "completed", "no_show"})


class Consultations:
    def __init__(self, appointments: AppointmentStore, store: ConsultationStore) -> None:
        self._appointments = appointments
        self.store = store

    async def join(self, user_id: str, appointment_id: str) -> Consultation:
        """The appointment's consultation; the doctor's first join opens it."""
        appointment = await self._appointments.get(appointment_id)
        if appointment is None:
            raise NotFound("no such appointment")
        if user_id not in (appointment["doctor_id"], appointment["patient_id"]):
            raise Forbidden("not your appointment")
        if appointment["status"] in CLOSED_APPOINTMENTS:
            raise Conflict(f"the appointment is {appointment['status']}")
        return await self.store.open(appointment, by_doctor=user_id == appointment["doctor_id"])

    async def as_member(self, consultation_id: str, user_id: str) -> Consultation:
        consultation = await self.store.get(consultation_id)
        if user_id not in (consultation.doctor_id, consultation.patient_id):
            raise Forbidden("not your consultation")
        return consultation

    async def as_doctor_with_transcript(
        self, consultation_id: str, user_id: str
    ) -> tuple[Consultation, list[dict[str, Any]]]:
        """``as_doctor`` and the whole transcript, read concurrently: one round trip of
        waiting instead of two. The transcript is dropped unread if the check fails."""
        consultation, segments = await asyncio.gather(
            self.as_doctor(consultation_id, user_id),
            self.store.segments(consultation_id, limit=TRANSCRIPT_LIMIT),
            return_exceptions=True,
        )
        if isinstance(consultation, BaseException):
            raise consultation  # the check's refusal first, whatever the read did
        if isinstance(segments, BaseException):
            raise segments
        return consultation, segments

    async def as_doctor(self, consultation_id: str, user_id: str) -> Consultation:
        consultation = await self.as_member(consultation_id, user_id)
        if user_id != consultation.doctor_id:
            raise Forbidden("only the consultation's doctor may do this")
        return consultation
