"""Payload parsing and token buckets: pure logic."""

from __future__ import annotations

import pytest

from hub.core.errors import BadRequest
from hub.core.protocol import MessageSend, Sync, parse
from hub.core.ratelimit import TokenBucket
from hub.core.settings import RateLimit


def test_id_must_match_entirely():
    """Regression: an unanchored pattern let 'a/b' (and 'ok\\n$where') through."""
    for bad in ("a/b", "ok\n", " x", "x" * 129, ""):
        with pytest.raises(BadRequest, match="client_id"):
            parse(MessageSend, {"conversation_id": "c1", "client_id": bad, "body": "b"})


def test_reason_never_echoes_the_value():
    with pytest.raises(BadRequest) as caught:
        parse(MessageSend, {"conversation_id": {"$gt": ""}, "client_id": "x", "body": 7})
    assert "$gt" not in caught.value.message and "7" not in caught.value.message


def test_strict_types_no_coercion():
    with pytest.raises(BadRequest, match="cursors"):
        parse(Sync, {"cursors": {"c1": "3"}})
    assert parse(Sync, {"cursors": {"c1": 3}}).cursors == {"c1": 3}
    assert parse(Sync, None).cursors in (None, {})


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    bucket = TokenBucket(RateLimit(rate=2.0, burst=3.0), clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 100
    assert sum(bucket.take() for _ in range(10)) == 3
