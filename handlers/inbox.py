"""inbox:list, conversation:claim, :release and :transfer: the clinic's inbox."""

from __future__ import annotations

from handlers.base import Ack, Call, Router
from hub.core.auth import CLINIC_ROLES
from hub.core.errors import Forbidden
from hub.core.protocol import ConversationRef, ConversationTransfer, Empty, Event, InboxList, ok


def _staff_only(call: Call) -> None:
    if call.connection.role not in CLINIC_ROLES:
        raise Forbidden("the inbox is the clinic's")


def register(router: Router) -> None:
    @router.on(Event.INBOX_POOLS, Empty)
    async def inbox_pools(call: Call, payload: Empty) -> Ack:
        _staff_only(call)
        return ok(pools=await call.services.pools.pools_of(call.user_id))

    @router.on(Event.INBOX_LIST, InboxList)
    async def inbox_list(call: Call, payload: InboxList) -> Ack:
        _staff_only(call)
        items = await call.services.inbox.listing(payload.pool_id, payload.state, call.user_id)
        return ok(conversations=items)

    @router.on(Event.CONVERSATION_CLAIM, ConversationRef)
    async def claim(call: Call, payload: ConversationRef) -> Ack:
        _staff_only(call)
        return ok(route=await call.services.inbox.claim(payload.conversation_id, call.user_id))

    @router.on(Event.CONVERSATION_RELEASE, ConversationRef)
    async def release(call: Call, payload: ConversationRef) -> Ack:
        _staff_only(call)
        return ok(route=await call.services.inbox.release(payload.conversation_id, call.user_id))

    @router.on(Event.CONVERSATION_TRANSFER, ConversationTransfer)
    async def transfer(call: Call, payload: ConversationTransfer) -> Ack:
        _staff_only(call)
        route = await call.services.inbox.transfer(
            payload.conversation_id, call.user_id, payload.to_user, payload.to_pool, payload.note
        )
        return ok(route=route)
