"""Live consultations: who may join, and who may speak for one.

Access comes from the appointment projection: only the appointment's doctor and
patient join, and not once it is cancelled, completed or a no-show. Only the doctor
appends transcript, asks the assistant, configures it and ends the consultation.

Every write to a consultation goes through this class, so that the copies kept for
``assistant:ask`` (:mod:`hub.consultations.cache`) learn of it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from functools import partial
from typing import Any

from hub.consultations.cache import ConsultationCache, Reading
from hub.core.errors import Conflict, Forbidden, NotFound
from hub.core.records import Consultation
from storage.appointments import AppointmentStore
from storage.consultations import TRANSCRIPT_LIMIT, Appended, ConsultationStore

CLOSED_APPOINTMENTS = frozenset({"cancelled", "completed", "no_show"})


class Consultations:
    def __init__(
        self, appointments: AppointmentStore, store: ConsultationStore, cache: ConsultationCache
    ) -> None:
        self._appointments = appointments
        self.store = store
        self._cache = cache

    async def join(self, user_id: str, appointment_id: str) -> Consultation:
        """The appointment's consultation; the doctor's first join opens it."""
        appointment = await self._appointments.get(appointment_id)
        if appointment is None:
            raise NotFound("no such appointment")
        if user_id not in (appointment["doctor_id"], appointment["patient_id"]):
            raise Forbidden("not your appointment")
        if appointment["status"] in CLOSED_APPOINTMENTS:
            raise Conflict(f"the appointment is {appointment['status']}")
        by_doctor = user_id == appointment["doctor_id"]
        consultation = await self.store.open(appointment, by_doctor=by_doctor)
        if by_doctor:  # it may have just opened
            await self._cache.changed(consultation.consultation_id)
        return consultation

    async def as_member(self, consultation_id: str, user_id: str) -> Consultation:
        consultation = await self.store.get(consultation_id)
        _check_member(consultation, user_id)
        return consultation

    async def as_doctor_with_transcript(
        self, consultation_id: str, user_id: str
    ) -> tuple[Consultation, list[dict[str, Any]]]:
        """``as_doctor`` and the whole transcript: this process's copy while no process
        has written to the consultation since, else both read concurrently (one round
        trip of waiting instead of two)."""
        consultation, segments = await self._cache.read(
            consultation_id, partial(self._with_transcript, consultation_id)
        )
        _check_doctor(consultation, user_id)
        return consultation, segments

    async def for_ask(self, consultation_id: str, user_id: str) -> Reading:
        """``as_doctor_with_transcript`` without waiting for the change token when this
        process has a copy: the copy, to be confirmed before anything drawn from it is
        shown (see ``Reading``). The copy decides access and the ask's conflicts on its
        own, because what they depend on cannot change under it: a consultation's doctor
        is fixed, and it never goes back to waiting once open. A copy of a consultation
        still waiting is not used."""
        reading = self._cache.peek(consultation_id, partial(self._with_transcript, consultation_id))
        if reading is None or reading.consultation.status == "waiting":
            return Reading(*await self.as_doctor_with_transcript(consultation_id, user_id))
        _check_doctor(reading.consultation, user_id)
        return reading

    async def _with_transcript(
        self, consultation_id: str
    ) -> tuple[Consultation, list[dict[str, Any]]]:
        """Both read concurrently: one round trip of waiting instead of two."""
        consultation, segments = await asyncio.gather(
            self.store.get(consultation_id),
            self.store.segments(consultation_id, limit=TRANSCRIPT_LIMIT),
        )
        return consultation, segments

    async def close(self) -> None:
        await self._cache.close()

    async def as_doctor(self, consultation_id: str, user_id: str) -> Consultation:
        consultation = await self.store.get(consultation_id)
        _check_doctor(consultation, user_id)
        return consultation

    # -- writes: each one tells the cache ------------------------------------------------

    async def append(
        self,
        consultation_id: str,
        user_id: str,
        client_id: str,
        speaker: str,
        text: str,
        at: datetime | None,
    ) -> Appended:
        """Store a segment from the consultation's doctor, once per ``client_id`` (see
        ``ConsultationStore.append``). Who the doctor is comes from this process's copy
        when it has one, as it never changes; whether the consultation is open, and the
        rest of it, from the write itself."""
        kept = self._cache.kept(consultation_id)
        _check_doctor(kept if kept is not None else await self.store.get(consultation_id), user_id)
        appended = await self.store.append(consultation_id, client_id, speaker, text, at)
        if appended.consultation is not None:
            await self._cache.changed(consultation_id, appended.segment)
        return appended

    async def end(self, consultation_id: str) -> bool:
        """Close it; False if it was not open."""
        ended = await self.store.end(consultation_id)
        if ended:
            await self._cache.changed(consultation_id)
        return ended

    async def set_auto(self, consultation_id: str, auto: bool) -> None:
        await self.store.set_auto(consultation_id, auto)
        await self._cache.changed(consultation_id)

    async def save_summary(self, consultation_id: str, summary: str, upto_seq: int) -> None:
        await self.store.save_summary(consultation_id, summary, upto_seq)
        await self._cache.changed(consultation_id)


def _check_member(consultation: Consultation, user_id: str) -> None:
    if user_id not in (consultation.doctor_id, consultation.patient_id):
        raise Forbidden("not your consultation")


def _check_doctor(consultation: Consultation, user_id: str) -> None:
    _check_member(consultation, user_id)
    if user_id != consultation.doctor_id:
        raise Forbidden("only the consultation's doctor may do this")
