"""notification:list, notification:ack and appointment:list."""

from __future__ import annotations

from datetime import UTC, timedelta

from handlers.base import Ack, Call, Router
from hub.core import clock
from hub.core.protocol import AppointmentList, Event, NotificationAck, NotificationList, Push, ok
from hub.delivery.appointments import with_names

# appointment:list without `from`: what started in the last day, and everything after.
RECENT = timedelta(days=1)


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
        marked = await call.services.notifications.ack(call.user_id, ids, clock.now())
        if marked:
            await call.emit_to_users(Push.NOTIFICATION_READ, {"ids": ids}, [call.user_id])
            for notification_id in marked:
                router.tasks.spawn(
                    call.services.webhooks.emit(
                        "notification.acked",
                        notification_id,
                        {"notification_id": notification_id, "user_id": call.user_id},
                    )
                )
        return ok()

    @router.on(Event.APPOINTMENT_LIST, AppointmentList)
    async def list_appointments(call: Call, payload: AppointmentList) -> Ack:
        start_from = payload.from_ or clock.now() - RECENT
        if start_from.tzinfo is None:
            start_from = start_from.replace(tzinfo=UTC)
        appointments, has_more = await call.services.appointments.list_for(
            call.user_id, start_from, payload.limit
        )
        named = await with_names(call.services.directory, appointments)
        return ok(appointments=named, has_more=has_more)
