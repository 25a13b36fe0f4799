"""message:send, message:history, sync, message:read and typing."""

from __future__ import annotations

from typing import Any

from handlers.base import Ack, Call, Router
from hub.core.auth import CLINIC_ROLES
from hub.core.errors import BadRequest, Forbidden
from hub.core.protocol import (
    Event,
    MessageHistory,
    MessageRead,
    MessageSend,
    Push,
    Sync,
    Typing,
    ok,
)
from hub.core.records import Conversation, Message
from hub.delivery.catchup import missed_messages


def register(router: Router) -> None:
    max_body = router.services.settings.max_body_chars

    @router.on(Event.MESSAGE_SEND, MessageSend)
    async def send_message(call: Call, payload: MessageSend) -> Ack:
        if len(payload.body) > max_body:
            raise BadRequest(f"body: at most {max_body} characters")
        if not payload.body.strip() and not payload.attachment_ids:
            raise BadRequest("body: must not be blank")
        services = call.services
        conversation = await services.conversations.require_member(
            payload.conversation_id, call.user_id
        )
        if payload.visibility == "staff":
            return await send_note(call, conversation, payload)
        attachments: tuple[dict[str, Any], ...] = ()
        if payload.attachment_ids:
            attachments = await services.attachments.for_message(
                conversation.conversation_id,
                call.user_id,
                payload.client_id,
                payload.attachment_ids,
            )
        message, created = await services.messages.send(
            conversation.conversation_id,
            call.user_id,
            payload.client_id,
            payload.body,
            attachments,
            sender_name=await services.directory.name_of(call.user_id),
            urgent=call.connection.role == "patient" and services.urgent.is_urgent(payload.body),
        )
        if payload.attachment_ids:
            await services.attachments.sent(payload.attachment_ids, payload.client_id)
        wire = message.to_wire()
        if created:
            # The inbox's waiting time first: a device that reacts to the message and
            # lists the inbox then sees it waiting.
            await services.inbox.message_stored(conversation, call.user_id)
            audience = await services.conversations.audience(conversation)
            await call.emit_to_users(Push.MESSAGE_NEW, {"message": wire}, audience)
            services.sms.message_stored(
                conversation.conversation_id, conversation.member_ids, call.user_id, message.seq
            )
            router.tasks.spawn(
                services.webhooks.emit(
                    "message.stored",
                    message.message_id,
                    {
                        "message_id": message.message_id,
                        "conversation_id": message.conversation_id,
                        "seq": message.seq,
                        "sender_id": message.sender_id,
                        "created_at": wire["created_at"],
                    },
                    phi={"body": message.body},
                )
            )
            if message.urgent:
                router.tasks.spawn(alarm(call, conversation, message))
            elif call.connection.role == "patient":
                router.tasks.spawn(reply_if_closed(call, conversation))
        return ok(message=wire)

    async def send_note(call: Call, conversation: Conversation, payload: MessageSend) -> Ack:
        """A staff-only note: its own store and seqs, to the clinic's people only; no
        SMS, no push, no automatic reply, nothing a patient's query can reach."""
        if call.connection.role not in CLINIC_ROLES:
            raise Forbidden("visibility: staff notes are the clinic's")
        if payload.attachment_ids:
            raise BadRequest("attachment_ids: attachments go in messages, not in notes")
        services = call.services
        note, created = await services.notes.send(
            conversation.conversation_id,
            call.user_id,
            payload.client_id,
            payload.body,
            sender_name=await services.directory.name_of(call.user_id),
        )
        wire = {**note.to_wire(), "visibility": "staff"}
        if created:
            staff = await services.inbox.staff_of(conversation)
            await call.emit_to_users(Push.NOTE_NEW, {"note": wire}, staff)
        return ok(note=wire)

    @router.on(Event.NOTE_HISTORY, MessageHistory)
    async def note_history(call: Call, payload: MessageHistory) -> Ack:
        if call.connection.role not in CLINIC_ROLES:
            raise Forbidden("staff notes are the clinic's")
        services = call.services
        await services.conversations.require_member(payload.conversation_id, call.user_id)
        notes, has_more = await services.notes.history(
            payload.conversation_id, payload.before_seq, payload.limit
        )
        return ok(notes=[{**n.to_wire(), "visibility": "staff"} for n in notes], has_more=has_more)

    async def alarm(call: Call, conversation: Conversation, message: Message) -> None:
        """An urgent patient message: the emergency notice to every device of the
        conversation (the sender's too), the inbox's order, the on-call page."""
        notice = await call.services.urgent.raise_alarm(conversation, message)
        if notice is not None:
            await call.emit_to_users(
                Push.MESSAGE_NEW,
                {"message": notice.to_wire()},
                await call.services.conversations.audience(conversation),
                skip_self=False,
            )

    async def reply_if_closed(call: Call, conversation: Conversation) -> None:
        """Outside office hours, the clinic's automatic reply, to every member."""
        reply = await call.services.closed_replies.after_patient_message(conversation)
        if reply is not None:
            await call.emit_to_users(
                Push.MESSAGE_NEW,
                {"message": reply.to_wire()},
                await call.services.conversations.audience(conversation),
                skip_self=False,  # the patient's own socket too: it has no ack of this one
            )

    @router.on(Event.MESSAGE_HISTORY, MessageHistory)
    async def message_history(call: Call, payload: MessageHistory) -> Ack:
        services = call.services
        await services.conversations.require_member(payload.conversation_id, call.user_id)
        messages, has_more = await services.messages.history(
            payload.conversation_id, payload.before_seq, payload.limit
        )
        return ok(messages=[m.to_wire() for m in messages], has_more=has_more)

    @router.on(Event.SYNC, Sync)
    async def sync(call: Call, payload: Sync) -> Ack:
        missed = await missed_messages(
            call.services.conversations,
            call.services.messages,
            call.services.revisions,
            call.user_id,
            payload.cursors,
            payload.changes,
            payload.limit,
        )
        return ok(
            messages=[m.to_wire() for m in missed.messages],
            changed=[m.to_wire() for m in missed.changed],
            expired=[e.to_wire() for e in missed.expired],
            has_more=missed.has_more,
        )

    @router.on(Event.MESSAGE_READ, MessageRead)
    async def mark_read(call: Call, payload: MessageRead) -> Ack:
        services = call.services
        conversation = await services.conversations.require_member(
            payload.conversation_id, call.user_id
        )
        if payload.seq > await services.messages.last_seq(conversation.conversation_id):
            raise BadRequest("seq: beyond the last message of the conversation")
        moved = await services.conversations.mark_read(
            conversation.conversation_id, call.user_id, payload.seq
        )
        if moved:
            audience = await services.conversations.audience(conversation)
            await call.emit_to_users(
                Push.MESSAGE_READ,
                {
                    "conversation_id": conversation.conversation_id,
                    "user_id": call.user_id,
                    "name": await services.directory.name_of(call.user_id),
                    "seq": payload.seq,
                },
                audience,
            )
        return ok()

    @router.on(Event.TYPING, Typing)
    async def typing(call: Call, payload: Typing) -> Ack:
        conversation = await call.services.conversations.require_member(
            payload.conversation_id, call.user_id
        )
        audience = await call.services.conversations.audience(conversation)
        others = [m for m in audience if m != call.user_id]
        await call.emit_to_users(
            Push.TYPING,
            {
                "conversation_id": conversation.conversation_id,
                "user_id": call.user_id,
                "name": await call.services.directory.name_of(call.user_id),
                "typing": payload.typing,
            },
            others,
        )
        return ok()
