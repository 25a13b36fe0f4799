"""The appointment event a clinic back-end publishes, and its lifecycle rules.

Lifecycle: scheduled -> confirmed -> completed; scheduled or confirmed -> cancelled or
no_show. A change of ``start`` while scheduled or confirmed is a reschedule. completed,
cancelled and no_show are final.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from hub.core.errors import BadRequest
from hub.core.protocol import Id

Status = Literal["scheduled", "confirmed", "completed", "cancelled", "no_show"]

TRANSITIONS: dict[str, frozenset[str]] = {
    "scheduled": frozenset({"scheduled", "confirmed", "cancelled", "no_show"}),
    "confirmed": frozenset({"confirmed", "completed", "cancelled", "no_show"}),
    "completed": frozenset(),
    "cancelled": frozenset(),
    "no_show": frozenset(),
}
MAX_EVENT_BYTES = 8192


class InvalidEvent(BadRequest):
    """An event that can never take effect; it goes to the dead-letter stream."""


class AppointmentEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Id
    appointment_id: Id
    doctor_id: Id
    patient_id: Id
    status: Status
    start: AwareDatetime
    occurred_at: AwareDatetime
    previous_status: Status | None = None
    reason: Annotated[str, Field(max_length=500)] | None = None

    @property
    def start_utc(self) -> datetime:
        return self.start.astimezone(UTC)

    @property
    def occurred_utc(self) -> datetime:
        return self.occurred_at.astimezone(UTC)


def parse_event(raw: str | bytes | dict[str, Any]) -> AppointmentEvent:
    """Parse and check an event; raise InvalidEvent with a reason that echoes no values."""
    if isinstance(raw, str | bytes):
        if len(raw) > MAX_EVENT_BYTES:
            raise InvalidEvent(f"event larger than {MAX_EVENT_BYTES} bytes")
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidEvent("not valid JSON") from None
    if not isinstance(raw, dict):
        raise InvalidEvent("event must be a JSON object")
    try:
        return AppointmentEvent.model_validate(raw)
    except ValidationError as exc:
        reasons = [
            f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)[:3]
        ]
        raise InvalidEvent("; ".join(reasons)) from None


def check_transition(stored_status: str, event: AppointmentEvent, stored_start: datetime) -> str:
    """The kind of change ``event`` makes to a stored appointment; InvalidEvent if impossible.

    Kinds: ``rescheduled`` (same status, new start), ``unchanged`` (same status and start),
    else the new status.
    """
    if event.status not in TRANSITIONS[stored_status]:
        raise InvalidEvent(f"impossible transition {stored_status} -> {event.status}")
    if event.status == stored_status:
        return "unchanged" if _same_instant(event.start_utc, stored_start) else "rescheduled"
    return event.status


def _same_instant(a: datetime, b: datetime) -> bool:
    if b.tzinfo is None:  # MongoDB hands back naive UTC datetimes
        b = b.replace(tzinfo=UTC)
    return abs((a - b).total_seconds()) < 0.001
