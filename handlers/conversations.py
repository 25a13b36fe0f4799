"""conversation:open and conversation:list."""

from __future__ import annotations

from typing import Any

from handlers.base import Ack, Call, Router
from hub.core.auth import CLINIC_ROLES
from hub.core.errors import BadRequest, Forbidden
from hub.core.protocol import ConversationOpen, Empty, Event, ok


def register(router: Router) -> None:
    @router.on(Event.CONVERSATION_OPEN, ConversationOpen)
    async def open_conversation(call: Call, payload: ConversationOpen) -> Ack:
        if payload.pool_id is not None:
            if call.connection.role != "patient":
                raise Forbidden("pool_id: patients write to a pool; staff claim from it")
            conversation, last_seq = await call.services.inbox.open(call.user_id, payload.pool_id)
            wire = conversation.to_wire(last_seq)
            await with_people(call, [wire])
            return ok(conversation=wire)
        if call.connection.role not in CLINIC_ROLES:
            raise Forbidden("only the clinic's staff open conversations")
        members = set(payload.member_ids) | {call.user_id}
        if len(members) < 2:
            raise BadRequest("member_ids: a conversation needs someone besides you")
        conversation, last_seq = await call.services.conversations.open(
            members, payload.appointment_id
        )
        wire = conversation.to_wire(last_seq)
        await with_people(call, [wire])
        return ok(conversation=wire)

    @router.on(Event.CONVERSATION_LIST, Empty)
    async def list_conversations(call: Call, payload: Empty) -> Ack:
        conversations = await call.services.conversations.list_for(call.user_id)
        await with_people(call, conversations)
        return ok(conversations=conversations)


async def with_people(call: Call, conversations: list[dict[str, Any]]) -> None:
    """Each conversation's ``members``: ``{id, name, role, title?}`` from the directory,
    in one read for all of them."""
    ids = [member for wire in conversations for member in wire["member_ids"]]
    people = await call.services.directory.people(ids)
    for wire in conversations:
        wire["members"] = [people[member] for member in wire["member_ids"]]
