"""Phone numbers: E.164 validation, masking for logs, and test numbers."""

from __future__ import annotations

import re

E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
TEST_PREFIX = "+1555"  # the clinic's existing service treats +1555... as fictional


def check_e164(raw: str) -> str:
    """The number if it is E.164 (``+`` and 8 to 15 digits); ValueError otherwise."""
    phone = raw.strip()
    if not E164.match(phone):
        raise ValueError("expected an E.164 phone number such as +14155550100")
    return phone


def mask(phone: str | None) -> str:
    """``+1******7890``: the country prefix and the last four digits, nothing more."""
    if not phone:
        return "-"
    if len(phone) <= 6:
        return "*" * len(phone)
    return phone[:2] + "*" * (len(phone) - 6) + phone[-4:]


def is_test_number(phone: str) -> bool:
    return phone.startswith(TEST_PREFIX)
