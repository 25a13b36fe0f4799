"""Office hours: open or closed, the next opening across weekends, holidays and a
change of daylight saving time, and what the automatic reply says."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from hub.core.errors import BadRequest
from hub.core.office_hours import closed_notice, open_seconds, parse_hours
from hub.core.settings import Settings

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks

PARIS = ZoneInfo("Europe/Paris")
WEEKDAYS_8_TO_18 = {
    day: [["08:00", "12:30"], ["13:30", "18:00"]] for day in ("mon", "tue", "wed", "thu", "fri")
}


def hours(**extra):
    return parse_hours({"timezone": "Europe/Paris", "weekly": WEEKDAYS_8_TO_18, **extra})


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)


@pytest.mark.parametrize(
    "moment, is_open",
    [
        (paris(2026, 11, 30, 8, 0), True),  # Monday, opening minute
        (paris(2026, 11, 30, 12, 45), False),  # lunch
        (paris(2026, 11, 30, 18, 0), False),  # closing minute
        (paris(2026, 11, 28, 10, 0), False),  # Saturday
    ],
)
def test_open_or_closed(moment: datetime, is_open: bool):
    assert hours().is_open(moment) is is_open


def test_the_next_opening_after_a_weekend_and_a_holiday():
    office = hours(holidays=["2026-11-30"])
    saturday = paris(2026, 11, 28, 10, 0)
    assert office.next_opening(saturday) == paris(2026, 12, 1, 8, 0)  # Monday is a holiday
    assert hours().next_opening(paris(2026, 11, 30, 12, 45)) == paris(2026, 11, 30, 13, 30)


def test_a_closed_period_across_the_change_to_winter_time_ends_at_local_eight():
    """Friday 23 Oct 2026 18:00 CEST (UTC+2) to Monday 26 Oct 08:00 CET (UTC+1): the
    clocks go back on Sunday 25 Oct, so the period is 63 hours, not 62."""
    friday_evening = paris(2026, 10, 23, 18, 30)
    opening = hours().next_opening(friday_evening)
    assert opening == paris(2026, 10, 26, 8, 0)
    assert opening.astimezone(UTC) == datetime(2026, 10, 26, 7, 0, tzinfo=UTC)
    closing = paris(2026, 10, 23, 18, 0).astimezone(UTC)
    assert (opening.astimezone(UTC) - closing).total_seconds() == 63 * 3600


def test_the_reply_says_until_when_how_soon_and_the_emergency_line():
    office = hours(response_time="two business days")
    text = closed_notice(
        Settings().closed_reply, office, office.next_opening(paris(2026, 11, 28, 10, 0))
    )
    assert text == (
        "We are closed until Monday 8:00. We answer within two business days. "
        "If this is an emergency, call 911."
    )
    assert "further notice" in closed_notice(
        "until {until}", parse_hours({"timezone": "UTC"}), None
    )


@pytest.mark.parametrize(
    "body, field",
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "UTC", "weekly": {"funday": []}}, "weekly"),
        ({"timezone": "UTC", "weekly": {"mon": [["18:00", "08:00"]]}}, "weekly.mon"),
        ({"timezone": "UTC", "weekly": {"mon": [["8:00", "18:00"]]}}, "weekly.mon"),
        ({"timezone": "UTC", "holidays": ["25/12/2026"]}, "holidays"),
        ({"timezone": "UTC", "response_time": ""}, "response_time"),
    ],
)
def test_bad_hours_are_refused_naming_the_field(body: dict, field: str):
    with pytest.raises(BadRequest, match=field):
        parse_hours(body)


def test_round_trip_and_the_reply_template_setting():
    office = hours(holidays=["2026-12-25"])
    assert parse_hours(office.to_wire()) == office
    assert Settings.from_env({"HUB_CLOSED_REPLY": "Closed until {until}."}).closed_reply
    with pytest.raises(Exception, match="HUB_CLOSED_REPLY"):
        Settings.from_env({"HUB_CLOSED_REPLY": "Closed. {diagnosis}"})


def test_business_time_between_two_instants():
    office = hours()
    friday_17 = paris(2026, 11, 27, 17, 0)
    monday_9 = paris(2026, 11, 30, 9, 0)
    # Friday 17:00-18:00 and Monday 08:00-09:00: two hours, the weekend not counted.
    assert open_seconds(office, friday_17, monday_9) == 2 * 3600
    # Over lunch: 12:00-12:30 and 13:30-14:00.
    assert open_seconds(office, paris(2026, 11, 30, 12, 0), paris(2026, 11, 30, 14, 0)) == 3600
    assert open_seconds(office, monday_9, friday_17) == 0
    # Across the change to winter time, a closed night counts nothing either way.
    assert open_seconds(office, paris(2026, 10, 23, 17, 0), paris(2026, 10, 26, 9, 0)) == 2 * 3600
    always = parse_hours(
        {
            "timezone": "UTC",
            "weekly": {
                d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
            },
        }
    )
    start = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert open_seconds(always, start, start.replace(day=29)) == 24 * 3600
