"""The catalogue of hub.core.schema covers the whole protocol, and the SDK's generated
types are current."""

from __future__ import annotations

import pytest

from hub.core import protocol, schema, typescript


def _constants(holder: type) -> set[str]:
    return {value for name, value in vars(holder).items() if name.isupper()}


def test_every_client_event_has_a_payload_and_an_answer():
    assert set(schema.CLIENT_EVENTS) == _constants(protocol.Event)


def test_every_server_event_has_a_shape():
    assert set(schema.SERVER_EVENTS) == _constants(protocol.Push) | {schema.SMS_SENT}


def test_a_refusal_and_an_answer_are_checked_against_their_event():
    schema.check_ack("sync", {"ok": False, "error": {"code": "bad_request", "message": "x"}})
    schema.check_ack("typing", {"ok": True})
    with pytest.raises(ValueError, match="ack of sync"):
        schema.check_ack("sync", {"ok": True, "messages": []})
    with pytest.raises(ValueError, match="refusal"):
        schema.check_ack("sync", {"ok": False, "error": {"code": "oops", "message": "x"}})
    with pytest.raises(ValueError, match="no client event"):
        schema.check_ack("nonsense", {"ok": True})


def test_a_field_the_schema_does_not_declare_is_a_break():
    event = {"conversation_id": "c", "user_id": "u", "typing": True}
    schema.check_event("typing", event)
    with pytest.raises(ValueError, match="typing breaks its schema"):
        schema.check_event("typing", {**event, "body": "x"})
    with pytest.raises(ValueError, match="no server event"):
        schema.check_event("surprise", {})


def test_the_generated_typescript_is_current():
    assert typescript.TARGET.read_text() == typescript.render(), (
        "run `python -m hub.core.typescript`"
    )


def test_the_typescript_names_every_event():
    text = typescript.render()
    for event in [*schema.CLIENT_EVENTS, *schema.SERVER_EVENTS]:
        assert f'"{event}":' in text
