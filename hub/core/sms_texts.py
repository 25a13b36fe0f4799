"""What an SMS says: fixed templates with no protected health information.

A template may use ``{clinic}``, and appointment templates also ``{date}`` and
``{time}``; nothing else can be put in, so a message body, a transcript, a diagnosis or
a reason for visit has no way into an SMS. Every SMS ends with :data:`OPT_OUT`. With
the opt-out line and the longest possible date and time, a template must fit one GSM-7
segment (160 characters).
"""

from __future__ import annotations

import string
from datetime import datetime

OPT_OUT = "Reply STOP to opt out."
SEGMENT = 160
KINDS = ("scheduled", "confirmed", "rescheduled", "cancelled", "message", "page")
DEFAULTS = {
    "scheduled": "{clinic}: you have an appointment on {date} at {time}.",
    "confirmed": "{clinic}: your appointment on {date} at {time} is confirmed.",
    "rescheduled": "{clinic}: your appointment is now on {date} at {time}.",
    "cancelled": "{clinic}: your appointment on {date} at {time} is cancelled.",
    "message": "{clinic}: you have a new message. Open the app to read it.",
    "page": "{clinic}: URGENT patient message. Open the inbox now.",
}
FIELDS = {kind: {"clinic", "date", "time"} for kind in KINDS} | {
    "message": {"clinic"},
    "page": {"clinic"},
}
HELP_TEXT = "{clinic}: appointment and message alerts. Reply STOP to opt out, START to opt in."

# The GSM 03.38 default alphabet (basic set); the extension table counts two each.
GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€")
LONGEST_DATE = "Wed 30 Sep 2026"
LONGEST_TIME = "12:00"


def gsm7_length(text: str) -> int:
    """Length in GSM-7 septets; ValueError if a character is outside the alphabet."""
    length = 0
    for ch in text:
        if ch in GSM7_BASIC:
            length += 1
        elif ch in GSM7_EXTENDED:
            length += 2
        else:
            raise ValueError(f"{ch!r} is not in the GSM-7 alphabet (it would split the SMS)")
    return length


def check_template(kind: str, template: str | None, clinic: str) -> None:
    """ValueError unless the template only uses its fields and fits one segment."""
    template = DEFAULTS[kind] if template is None else template
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    extra = used - FIELDS[kind]
    if extra:
        raise ValueError(f"unknown placeholder {sorted(extra)}; allowed: {sorted(FIELDS[kind])}")
    text = _finish(template.format(clinic=clinic, date=LONGEST_DATE, time=LONGEST_TIME))
    length = gsm7_length(text)
    if length > SEGMENT:
        raise ValueError(f"{length} GSM-7 characters with the opt-out line; at most {SEGMENT}")


def render(
    kind: str, templates: dict[str, str] | None, clinic: str, start_local: datetime | None = None
) -> str:
    """The SMS text for ``kind``; ``start_local`` is the appointment in the recipient's zone."""
    template = (templates or {}).get(kind) or DEFAULTS[kind]
    values = {"clinic": clinic}
    if start_local is not None:
        values["date"] = start_local.strftime("%a %d %b %Y")
        values["time"] = start_local.strftime("%H:%M")
    return _finish(template.format(**values))


def help_text(clinic: str) -> str:
    return HELP_TEXT.format(clinic=clinic)


def _finish(text: str) -> str:
    return f"{text.rstrip()} {OPT_OUT}"
