"""What a push notification says: a title and a body from fixed templates, with no
protected health information.

As with SMS (``sms_texts``), a template can use only ``{clinic}`` and, for
appointments, ``{date}`` and ``{time}``: a message body, a note or a diagnosis has no
way into a push payload, whose text lock screens show to whoever holds the phone and
which passes through Apple's, Google's or Mozilla's servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

KINDS = ("scheduled", "confirmed", "rescheduled", "cancelled", "message")
BODIES = {
    "scheduled": "You have an appointment on {date} at {time}.",
    "confirmed": "Your appointment on {date} at {time} is confirmed.",
    "rescheduled": "Your appointment changed: it is now on {date} at {time}.",
    "cancelled": "Your appointment on {date} at {time} is cancelled.",
    "message": "New message from {clinic}.",
}


@dataclass(frozen=True, slots=True)
class PushText:
    title: str
    body: str


def render(kind: str, clinic: str, start_local: datetime | None = None) -> PushText:
    """The title (the clinic's name) and body of a push for ``kind``; ``start_local``
    is the appointment in the recipient's time zone."""
    values = {"clinic": clinic}
    if start_local is not None:
        values["date"] = start_local.strftime("%a %d %b")
        values["time"] = start_local.strftime("%H:%M")
    return PushText(title=clinic, body=BODIES[kind].format(**values))
