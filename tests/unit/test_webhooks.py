"""Webhook signatures: which secrets sign a delivery, and when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.delivery.webhooks import signing_secrets


def test_a_replaced_webhook_secret_signs_until_its_overlap_ends():
    start = datetime(2031, 3, 30, 0, 59, tzinfo=UTC)
    subscription = {
        "secret": "new",
        "previous_secret": "old",
        "previous_until": start + timedelta(hours=24),
    }
    assert signing_secrets(subscription, start) == ["new", "old"]
    assert signing_secrets(subscription, start + timedelta(hours=24)) == ["new"]
    assert signing_secrets({"secret": "only"}, start) == ["only"]
