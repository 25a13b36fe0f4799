"""Appointment updates: apply an event once, then tell the patient and the doctor.

Every ingestion path (the stream consumer, pub/sub, the HTTP API) ends here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio

from hub.core.appointment_event import AppointmentEvent
from hub.core.protocol import Push
from hub.core.rooms import DEFAULT_ROOMS, Rooms
from hub.core.wire import notification_to_wire
from hub.delivery.fallback import FallbackScheduler
from storage.appointments import Applied, AppointmentStore
from storage.directory import Directory

log = logging.getLogger("hub.updates")


class AppointmentUpdates:
    def __init__(
        self,
        sio: socketio.AsyncServer,
        appointments: AppointmentStore,
        sms: FallbackScheduler,
        directory: Directory,
        rooms: Rooms = DEFAULT_ROOMS,
    ) -> None:
        self._rooms = rooms
        self._sio = sio
        self._appointments = appointments
        self._sms = sms
        self._directory = directory

    async def handle(self, event: AppointmentEvent) -> Applied:
        """Store the event's effect and emit it; raises InvalidEvent or Unavailable.

        Emits only the notifications this call created, so an event seen twice (two
        paths, two processes) reaches each device once. Each recipient gets
        ``appointment:updated`` before ``notification:new``; recipients are served
        concurrently.
        """
        result = await self._appointments.apply(event)
        appointment = result.appointment
        if result.notifications and appointment is not None:
            appointment = (await with_names(self._directory, [appointment]))[0]
        await asyncio.gather(
            *(self._tell(notification, appointment) for notification in result.notifications)
        )
        self._sms.notifications_created(result.notifications)
        log.info(
            "appointment event=%s appointment=%s outcome=%s kind=%s",
            event.event_id,
            event.appointment_id,
            result.outcome,
            result.kind or "-",
        )
        return result

    async def _tell(self, notification: dict[str, Any], appointment: Any) -> None:
        room = self._rooms.user(notification["user_id"])
        await self._sio.emit(Push.APPOINTMENT_UPDATED, {"appointment": appointment}, to=room)
        await self._sio.emit(
            Push.NOTIFICATION_NEW, {"notification": notification_to_wire(notification)}, to=room
        )


async def with_names(
    directory: Directory, appointments: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The appointments with ``doctor_name`` and ``patient_name`` from the directory."""
    ids = [a[role] for a in appointments for role in ("doctor_id", "patient_id")]
    people = await directory.people(ids) if ids else {}
    return [
        {
            **a,
            "doctor_name": people[a["doctor_id"]]["name"],
            "patient_name": people[a["patient_id"]]["name"],
        }
        for a in appointments
    ]
