"""presence:query."""

from __future__ import annotations

from handlers.base import Ack, Call, Router
from hub.core.errors import Forbidden
from hub.core.protocol import Event, PresenceQuery, ok


def register(router: Router) -> None:
    @router.on(Event.PRESENCE_QUERY, PresenceQuery)
    async def query_presence(call: Call, payload: PresenceQuery) -> Ack:
        services = call.services
        wanted = list(dict.fromkeys(payload.user_ids))
        if call.connection.role != "admin":
            contacts = await services.conversations.contacts_of(call.user_id)
            strangers = [u for u in wanted if u not in contacts and u != call.user_id]
            if strangers:
                raise Forbidden("presence is shown only for people you share a conversation with")
        return ok(online=await services.presence.online(wanted))
