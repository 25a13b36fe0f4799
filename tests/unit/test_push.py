"""What a push says: the templates, the payload, the settings."""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime

import pytest

from hub.core import push_texts
from hub.core.errors import ConfigError
from hub.core.settings import Settings, vapid_key_pair, vapid_public_key
from workers.push_services import Push, _failed

START = datetime(2027, 1, 15, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize("kind", push_texts.KINDS)
def test_every_template_says_the_clinic_and_a_date_and_nothing_else(kind: str):
    text = push_texts.render(kind, "Riverside Clinic", START)
    assert text.title == "Riverside Clinic"
    assert "{" not in text.body and "}" not in text.body
    if kind != "message":
        assert "Fri 15 Jan" in text.body and "09:30" in text.body
    # Nothing else can be put in: the renderer takes no other value.
    assert list(inspect.signature(push_texts.render).parameters) == [
        "kind",
        "clinic",
        "start_local",
    ]


def test_the_web_payload_holds_the_text_the_collapse_key_the_badge_and_ids():
    push = Push(
        "Clinic", "New message from Clinic.", "conversation:c1", 3, {"conversation_id": "c1"}
    )
    assert json.loads(push.web_payload()) == {
        "title": "Clinic",
        "body": "New message from Clinic.",
        "tag": "conversation:c1",
        "badge": 3,
        "data": {"conversation_id": "c1"},
    }


@pytest.mark.parametrize(
    "status, retryable, gone",
    [
        (None, True, False),
        (429, True, False),
        (503, True, False),
        (404, False, True),
        (410, False, True),
        (400, False, False),
        (413, False, False),
    ],
)
def test_service_answers_are_sorted_into_retry_gone_or_failed(
    status: int | None, retryable: bool, gone: bool
):
    failed = _failed(status, "refused")
    assert (failed.retryable, failed.gone) == (retryable, gone)


def test_vapid_keys_from_the_environment():
    private, public = vapid_key_pair()
    settings = Settings.from_env({"HUB_VAPID_PRIVATE_KEY": private})
    assert settings.push.vapid_public_key == public == vapid_public_key(private)
    assert len(public) == 87 and public.startswith("B")  # an uncompressed P-256 point
    assert settings.vapid_subject == "mailto:push@clinic.invalid"
    with pytest.raises(ConfigError, match="HUB_VAPID_PRIVATE_KEY"):
        Settings.from_env({"HUB_VAPID_PRIVATE_KEY": "not-a-key"})
    with pytest.raises(ConfigError, match="HUB_VAPID_SUBJECT"):
        Settings.from_env({"HUB_VAPID_SUBJECT": "it@clinic.test"})
    with pytest.raises(ConfigError, match="HUB_FCM_CREDENTIALS"):
        Settings.from_env({"HUB_FCM_CREDENTIALS": "/nonexistent/service-account.json"})


def test_the_topic_is_base64url_of_32_characters_and_tells_long_ids_apart():
    """The Topic was ``conversation:c_…`` cut at 32 characters: a colon, which RFC 8030
    does not allow (Firefox users got no push), and two ids that share their first
    characters collapsed into one."""
    import re

    from workers.push_services import web_push_topic

    first = web_push_topic("conversation:c_0123456789abcdef0123456789-a")
    second = web_push_topic("conversation:c_0123456789abcdef0123456789-b")
    for topic in (first, second):
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", topic)
    assert first != second
    assert web_push_topic("appointment:apt-1") == web_push_topic("appointment:apt-1")
