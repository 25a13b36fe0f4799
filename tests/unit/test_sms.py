"""Pure parts of the SMS fallback: quiet hours, templates, phone masking, settings."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from hub.core.errors import ConfigError
from hub.core.phone import check_e164, is_test_number, mask
from hub.core.settings import Settings
from hub.core.sms_texts import OPT_OUT, check_template, gsm7_length, render
from hub.core.tasks import backoff
from workers.sms import quiet_wait

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks

PARIS = ZoneInfo("Europe/Paris")
NIGHT = (21 * 60, 8 * 60)


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        (datetime(2026, 12, 1, 20, 59, tzinfo=PARIS), 0),
        (datetime(2026, 12, 1, 21, 0, tzinfo=PARIS), 11 * 3600),
        (datetime(2026, 12, 2, 3, 30, tzinfo=PARIS), 4.5 * 3600),
        (datetime(2026, 12, 2, 7, 59, tzinfo=PARIS), 60),
        (datetime(2026, 12, 2, 8, 0, tzinfo=PARIS), 0),
    ],
)
def test_quiet_hours_across_midnight(local: datetime, expected: float):
    assert quiet_wait(local, NIGHT) == expected


def test_quiet_hours_within_a_day_and_across_a_clock_change():
    assert quiet_wait(datetime(2026, 12, 1, 13, 0, tzinfo=PARIS), (12 * 60, 14 * 60)) == 3600
    # 2027-03-28 02:00 Paris skips to 03:00: from 01:00 to 08:00 is six real hours.
    local = datetime(2027, 3, 28, 1, 0, tzinfo=PARIS)
    assert timedelta(seconds=quiet_wait(local, NIGHT)) == timedelta(hours=6)


def test_templates_hold_only_their_fields_and_end_with_the_opt_out_line():
    text = render("cancelled", None, "Clinic", datetime(2026, 12, 3, 9, 5))
    assert text == "Clinic: your appointment on Thu 03 Dec 2026 at 09:05 is cancelled. " + OPT_OUT
    with pytest.raises(ValueError, match="placeholder"):
        check_template("message", "{clinic}: {body}", "Clinic")
    with pytest.raises(ValueError, match="placeholder"):
        check_template("scheduled", "{clinic} {reason}", "Clinic")
    with pytest.raises(ValueError, match="GSM-7"):
        check_template("scheduled", "{clinic} ✓ {date}", "Clinic")
    with pytest.raises(ValueError, match="at most 160"):
        check_template("scheduled", "{clinic} " + "x" * 150, "Clinic")


def test_gsm7_extension_characters_count_twice():
    assert gsm7_length("a{b}") == 6


def test_phone_masking_and_validation():
    assert mask("+15551237890") == "+1******7890"
    assert mask(None) == "-"
    assert check_e164(" +33612345678 ") == "+33612345678"
    for bad in ("0612345678", "+0123456789", "+1 415 555 0100", "+1234567"):
        with pytest.raises(ValueError):
            check_e164(bad)
    assert is_test_number("+15555550123") and not is_test_number("+14155550123")


def test_backoff_grows_and_stays_positive():
    assert all(1.0 <= backoff(2.0, 0) <= 2.0 for _ in range(50))
    assert max(backoff(2.0, 4) for _ in range(200)) > 8.0


def test_sms_settings_are_checked_at_start_up():
    settings = Settings.from_env({"HUB_SMS_QUIET_HOURS": "22:30-07:15"})
    assert settings.sms.quiet_hours == (22 * 60 + 30, 7 * 60 + 15)
    assert settings.sms.driver == "log"
    for env, name in [
        ({"HUB_SMS_QUIET_HOURS": "22-7"}, "HUB_SMS_QUIET_HOURS"),
        ({"HUB_CLINIC_NAME": "A" * 120}, "HUB_SMS_TEMPLATE_"),
        ({"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"}, "TWILIO_FROM_NUMBER"),
        ({"TWILIO_FROM_NUMBER": "12345"}, "TWILIO_FROM_NUMBER"),
        ({"HUB_SMS_TEMPLATE_MESSAGE": "{clinic} {body}"}, "HUB_SMS_TEMPLATE_MESSAGE"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env(env)
