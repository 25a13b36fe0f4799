"""Wire forms of stored documents: what clients see of a segment, a notification and
an appointment. The field names are the protocol's (docs/protocol.md); dates are
ISO 8601 in UTC (every MongoDB client of the hub is ``tz_aware``)."""

from __future__ import annotations

from typing import Any

from hub.core.protocol import iso


def segment_to_wire(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "consultation_id": doc["consultation_id"],
        "seq": doc["seq"],
        "client_id": doc["client_id"],
        "speaker": doc["speaker"],
        "text": doc["text"],
        "at": iso(doc["at"]),
    }


def notification_to_wire(doc: dict[str, Any]) -> dict[str, Any]:
    """An appointment's notification carries ``appointment``; an escalation of a
    waiting conversation carries ``conversation``."""
    wire = {
        "id": doc["_id"],
        "type": doc["type"],
        "created_at": iso(doc["created_at"]),
        "read_at": iso(doc["read_at"]) if doc.get("read_at") else None,
    }
    for part in ("appointment", "conversation"):
        if part in doc:
            wire[part] = doc[part]
    return wire


def appointment_to_wire(doc: dict[str, Any]) -> dict[str, Any]:
    """The appointment as clients see it."""
    return {
        "id": doc["_id"],
        "doctor_id": doc["doctor_id"],
        "patient_id": doc["patient_id"],
        "status": doc["status"],
        "start": iso(doc["start"]),
        "previous_status": doc.get("previous_status"),
        "previous_start": iso(doc["previous_start"]) if doc.get("previous_start") else None,
        "reason": doc.get("reason"),
        "updated_at": iso(doc["occurred_at"]),
    }
