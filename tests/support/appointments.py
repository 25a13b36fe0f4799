"""Appointment events as clinic back-ends publish them."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from hub.core import clock

# Events happen from the start of the hour the suite started, and appointments start
# three days later: "upcoming" and "since a day ago" then hold on any day it runs.
T0 = clock.now().replace(minute=0, second=0, microsecond=0)


def event(
    appointment_id: str,
    status: str,
    *,
    doctor_id: str,
    patient_id: str,
    minutes: int = 0,
    start: datetime = T0 + timedelta(days=3),
    **extra: Any,
) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "appointment_id": appointment_id,
        "doctor_id": doctor_id,
        "patient_id": patient_id,
        "status": status,
        "start": start.isoformat(),
        "occurred_at": (T0 + timedelta(minutes=minutes)).isoformat(),
        **extra,
    }
