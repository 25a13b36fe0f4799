"""message:edit, message:retract: a sender changes what they sent, the record keeps it;
export:request, export:url: a patient's copy of their record."""

from __future__ import annotations

from handlers.base import Ack, Call, Router
from hub.core.auth import CLINIC_ROLES
from hub.core.errors import BadRequest, Forbidden
from hub.core.protocol import Empty, Event, ExportRef, MessageEdit, MessageRetract, Push, ok
from hub.core.records import Message


def register(router: Router) -> None:
    record = router.services.settings.record
    max_body = router.services.settings.max_body_chars

    @router.on(Event.MESSAGE_EDIT, MessageEdit)
    async def edit(call: Call, payload: MessageEdit) -> Ack:
        if len(payload.body) > max_body:
            raise BadRequest(f"body: at most {max_body} characters")
        if not payload.body.strip():
            raise BadRequest("body: must not be blank (retract the message instead)")
        services = call.services
        await services.conversations.require_member(payload.conversation_id, call.user_id)
        message, changed = await services.revisions.edit(
            payload.conversation_id, payload.seq, call.user_id, payload.body, record.edit_window
        )
        if changed:
            await tell_members(call, Push.MESSAGE_EDITED, message)
        return ok(message=message.to_wire())

    @router.on(Event.MESSAGE_RETRACT, MessageRetract)
    async def retract(call: Call, payload: MessageRetract) -> Ack:
        services = call.services
        await services.conversations.require_member(payload.conversation_id, call.user_id)
        staff = call.connection.role in CLINIC_ROLES
        message, changed = await services.revisions.retract(
            payload.conversation_id,
            payload.seq,
            call.user_id,
            payload.reason,
            None if staff else record.patient_retract_window,
        )
        if changed:
            await tell_members(call, Push.MESSAGE_RETRACTED, message)
        return ok(message=message.to_wire())

    async def tell_members(call: Call, event: str, message: Message) -> None:
        conversation = await call.services.conversations.get(message.conversation_id)
        audience = await call.services.conversations.audience(conversation)
        await call.emit_to_users(event, {"message": message.to_wire()}, audience)

    @router.on(Event.EXPORT_REQUEST, Empty)
    async def request_export(call: Call, payload: Empty) -> Ack:
        if call.connection.role != "patient":
            raise Forbidden("an export is the patient's own; the clinic asks over HTTP")
        export = await call.services.exports.request(call.user_id, requested_by=call.user_id)
        return ok(export=export)

    @router.on(Event.EXPORT_URL, ExportRef)
    async def export_url(call: Call, payload: ExportRef) -> Ack:
        export = await call.services.exports.status(payload.export_id, call.user_id)
        return ok(export=export)
