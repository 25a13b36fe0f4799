"""Appointment events as clinic back-ends publish them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # events happen from here on


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
