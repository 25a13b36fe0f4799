"""consultation:join/end, transcript:append/history, assistant:ask/configure."""

from __future__ import annotations

from handlers.base import Ack, Call, Router, join_room
from hub.core.errors import Conflict
from hub.core.protocol import (
    AssistantApprove,
    AssistantAsk,
    AssistantConfigure,
    ConsultationJoin,
    ConsultationRef,
    Event,
    Push,
    TranscriptAppend,
    TranscriptHistory,
    iso,
    ok,
)
from hub.core.wire import segment_to_wire


def register(router: Router) -> None:
    @router.on(Event.CONSULTATION_JOIN, ConsultationJoin)
    async def join(call: Call, payload: ConsultationJoin) -> Ack:
        consultation = await call.services.consultations.join(call.user_id, payload.appointment_id)
        room = call.services.rooms.consultation(consultation.consultation_id)
        await join_room(call.services.sio, call.sid, room)
        return ok(consultation=consultation.to_wire())

    @router.on(Event.TRANSCRIPT_APPEND, TranscriptAppend)
    async def append(call: Call, payload: TranscriptAppend) -> Ack:
        services = call.services
        appended = await services.consultations.append(
            payload.consultation_id,
            call.user_id,
            payload.client_id,
            payload.speaker,
            payload.text,
            payload.at,
        )
        wire = segment_to_wire(appended.segment)
        consultation = appended.consultation
        if consultation is not None:  # new: shown, and counted towards a suggestion
            await services.sio.emit(
                Push.TRANSCRIPT_NEW,
                {"segment": wire},
                to=call.services.rooms.consultation(consultation.consultation_id),
                skip_sid=call.sid,
            )
            router.tasks.spawn(services.assistant.segment_added(consultation, wire["seq"]))
        return ok(segment=wire)

    @router.on(Event.TRANSCRIPT_HISTORY, TranscriptHistory)
    async def history(call: Call, payload: TranscriptHistory) -> Ack:
        consultations = call.services.consultations
        consultation = await consultations.as_member(payload.consultation_id, call.user_id)
        segments = await consultations.store.segments(
            consultation.consultation_id, payload.after_seq, payload.limit + 1
        )
        await consultations.store.audit(
            call.user_id,
            "transcript.read",
            consultation.consultation_id,
            after_seq=payload.after_seq,
            count=min(len(segments), payload.limit),
        )
        return ok(
            segments=[segment_to_wire(s) for s in segments[: payload.limit]],
            has_more=len(segments) > payload.limit,
        )

    @router.on(Event.CONSULTATION_END, ConsultationRef)
    async def end(call: Call, payload: ConsultationRef) -> Ack:
        services = call.services
        consultation = await services.consultations.as_doctor(payload.consultation_id, call.user_id)
        if not await services.consultations.end(consultation.consultation_id):
            if consultation.status == "ended":
                return ok(note_request_id=None)  # ended before: nothing more to do
            raise Conflict("the consultation is not open")
        await services.sio.emit(
            Push.CONSULTATION_ENDED,
            {"consultation_id": consultation.consultation_id},
            to=call.services.rooms.consultation(consultation.consultation_id),
        )
        router.tasks.spawn(
            services.webhooks.emit(
                "consultation.ended",
                consultation.consultation_id,
                {
                    "consultation_id": consultation.consultation_id,
                    "appointment_id": consultation.appointment_id,
                    "doctor_id": consultation.doctor_id,
                    "patient_id": consultation.patient_id,
                },
            )
        )
        return ok(note_request_id=services.assistant.end(consultation))

    @router.on(Event.ASSISTANT_ASK, AssistantAsk)
    async def ask(call: Call, payload: AssistantAsk) -> Ack:
        services = call.services
        reading = await services.consultations.for_ask(payload.consultation_id, call.user_id)
        if reading.consultation.status == "waiting":
            raise Conflict("the consultation has not started")
        return ok(request_id=services.assistant.ask(reading, payload.question))

    @router.on(Event.ASSISTANT_APPROVE, AssistantApprove)
    async def approve(call: Call, payload: AssistantApprove) -> Ack:
        """The doctor's sign-off of a note draft: only then is it part of the record
        (and of the patient's export)."""
        store = call.services.consultations.store
        consultation = await call.services.consultations.as_doctor(
            payload.consultation_id, call.user_id
        )
        approved = await store.approve_note(
            consultation.consultation_id, payload.request_id, call.user_id, payload.text
        )
        await store.audit(
            call.user_id,
            "assistant.approved",
            consultation.consultation_id,
            request_id=payload.request_id,
            edited=payload.text is not None,
        )
        return ok(
            note={
                "request_id": approved["request_id"],
                "text": approved["approved_text"],
                "approved_at": iso(approved["approved_at"]),
            }
        )

    @router.on(Event.ASSISTANT_CONFIGURE, AssistantConfigure)
    async def configure(call: Call, payload: AssistantConfigure) -> Ack:
        services = call.services
        consultation = await services.consultations.as_doctor(payload.consultation_id, call.user_id)
        await services.consultations.set_auto(consultation.consultation_id, payload.auto)
        services.assistant.configure(consultation, payload.auto)
        return ok(auto=payload.auto)
