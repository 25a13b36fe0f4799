"""A clinic's office hours: when it answers, and when it opens next.

Hours are local to the clinic's time zone, per weekday, with whole days off
(holidays). Everything is computed in that zone and compared in UTC, so a closed
period that spans a change of daylight saving time ends at the right instant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hub.core.errors import BadRequest

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^24:00$")
MAX_LOOKAHEAD_DAYS = 366  # a clinic closed a whole year ahead is "closed until further notice"


@dataclass(frozen=True, slots=True)
class OfficeHours:
    zone: ZoneInfo
    weekly: dict[int, tuple[tuple[time, time], ...]]  # weekday (0 = Monday) -> spans
    holidays: frozenset[date] = frozenset()
    response_time: str = "one business day"
    updated_at: datetime | None = field(default=None, compare=False)

    def is_open(self, moment: datetime) -> bool:
        local = moment.astimezone(self.zone)
        if local.date() in self.holidays:
            return False
        clock = local.time().replace(tzinfo=None)
        return any(start <= clock < end for start, end in self.weekly.get(local.weekday(), ()))

    def next_opening(self, moment: datetime) -> datetime | None:
        """When the clinic opens next after ``moment`` (aware), or None if it does not
        within a year. Meant for a moment when it is closed."""
        local = moment.astimezone(self.zone)
        for offset in range(MAX_LOOKAHEAD_DAYS + 1):
            day = local.date() + timedelta(days=offset)
            if day in self.holidays:
                continue
            for start, _ in sorted(self.weekly.get(day.weekday(), ())):
                opening = datetime.combine(day, start, tzinfo=self.zone)
                if opening > local:
                    return opening
        return None

    def to_wire(self) -> dict[str, Any]:
        return {
            "timezone": self.zone.key,
            "weekly": {
                WEEKDAYS[day]: [[_clock(s), _clock(e)] for s, e in spans]
                for day, spans in sorted(self.weekly.items())
            },
            "holidays": sorted(d.isoformat() for d in self.holidays),
            "response_time": self.response_time,
        }


def parse_hours(body: Any) -> OfficeHours:
    """The body of ``PUT /api/v1/clinic/hours``; BadRequest naming the bad field."""
    if not isinstance(body, dict):
        raise BadRequest("body: an object")
    try:
        zone = ZoneInfo(str(body.get("timezone", "")))
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest("timezone: an IANA time zone such as Europe/Paris") from None
    weekly_in = body.get("weekly", {})
    if not isinstance(weekly_in, dict) or set(weekly_in) - set(WEEKDAYS):
        raise BadRequest(f"weekly: an object with keys among {', '.join(WEEKDAYS)}")
    weekly: dict[int, tuple[tuple[time, time], ...]] = {}
    for name, spans in weekly_in.items():
        if not isinstance(spans, list) or len(spans) > 6:
            raise BadRequest(f"weekly.{name}: a list of at most 6 [open, close] pairs")
        parsed = []
        for span in spans:
            if not (isinstance(span, list) and len(span) == 2):
                raise BadRequest(f'weekly.{name}: each span is ["08:00", "12:30"]')
            start, end = (_parse_clock(name, value) for value in span)
            if not start < end:
                raise BadRequest(f"weekly.{name}: a span closes after it opens")
            parsed.append((start, end))
        weekly[WEEKDAYS.index(name)] = tuple(sorted(parsed))
    holidays_in = body.get("holidays", [])
    if not isinstance(holidays_in, list) or len(holidays_in) > 400:
        raise BadRequest("holidays: a list of at most 400 dates")
    try:
        holidays = frozenset(date.fromisoformat(str(d)) for d in holidays_in)
    except ValueError:
        raise BadRequest("holidays: dates such as 2026-12-25") from None
    response = body.get("response_time", "one business day")
    if not isinstance(response, str) or not 1 <= len(response) <= 80:
        raise BadRequest('response_time: text such as "one business day", at most 80 characters')
    return OfficeHours(zone, weekly, holidays, response)


def _parse_clock(day: str, value: Any) -> time:
    if not isinstance(value, str) or not _CLOCK.match(value):
        raise BadRequest(f"weekly.{day}: times are HH:MM, 00:00 to 24:00")
    if value == "24:00":
        return time.max
    hour, minute = value.split(":")
    return time(int(hour), int(minute))


def _clock(value: time) -> str:
    return "24:00" if value == time.max else value.strftime("%H:%M")


def closed_notice(template: str, hours: OfficeHours, opening: datetime | None) -> str:
    """The automatic reply to a patient who writes while the clinic is closed."""
    if opening is None:
        until = "further notice"
    else:
        local = opening.astimezone(hours.zone)
        until = f"{local.strftime('%A')} {local.hour}:{local.minute:02d}"
    return template.format(until=until, response_time=hours.response_time)


def open_seconds(hours: OfficeHours, start: datetime, end: datetime) -> float:
    """Seconds between two instants during which the clinic is open (business time)."""
    if end <= start:
        return 0.0
    total = 0.0
    day = start.astimezone(hours.zone).date()
    last = end.astimezone(hours.zone).date()
    while day <= last:
        if day not in hours.holidays:
            for span_start, span_end in hours.weekly.get(day.weekday(), ()):
                opens = datetime.combine(day, span_start, tzinfo=hours.zone)
                if span_end == time.max:
                    closes = datetime.combine(day + timedelta(days=1), time(0), tzinfo=hours.zone)
                else:
                    closes = datetime.combine(day, span_end, tzinfo=hours.zone)
                overlap = min(closes, end) - max(opens, start)
                total += max(0.0, overlap.total_seconds())
        day += timedelta(days=1)
    return total
