"""notification:list and notification:ack."""

from __future__ import annotations

from datetime import UTC, datetime

from handlers.base import Ack, Call, Router
from hub.protocol import Event, NotificationAck, NotificationList, Push, ok


def register(router: Router) -> None:
    @router.on(Event.NOTIFICATION_LIST, NotificationList)
    async def list_notifications(call: Call, payload: NotificationList) -> Ack:
        notifications, unread, has_more = await call.services.notifications.list_for(
            call.user_id, payload.before, payload.limit, payload.unread_only
        )
        return ok(notifications=notifications, unread_count=unread, has_more=has_more)

    @router.on(Event.NOTIFICATION_ACK, NotificationAck)
    async def ack_notifications(call: Call, payload: NotificationAck) -> Ack:
        ids = list(dict.fromkeys(payload.ids))
        marked = await call.services.notifications.ack(call.user_id, ids, datetime.now(UTC))
        if marked:
            await call.emit_to_users(Push.NOTIFICATION_READ, {"ids": ids}, [call.user_id])
        return ok()
