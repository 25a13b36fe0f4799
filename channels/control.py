"""The control channel: what every hub must act on at once, whichever hub heard it.

One Redis pub/sub channel for the hub (``CONTROL_CHANNEL``); each message is a JSON
object with its ``kind`` (:class:`Control`) and the ``tenant`` it concerns. Delivery
is best effort, as pub/sub is: a hub that was not subscribed when a message went out
misses it. What a message says is therefore always stored first (a revocation in
MongoDB, whose copy every hub reads again within seconds), and the message only makes
the other hubs act on it now instead of at their next read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import orjson

from channels.client import RedisClient, Subscriber, publish, redis_errors
from channels.names import CONTROL_CHANNEL

log = logging.getLogger("hub.control")


class Control(StrEnum):
    REVOKE = "revoke"  # end the sessions of ``user_id``: {"user_id", "revoked_at"}
    CHANGED = "changed"  # drop what is cached of a clinic's setting: {"what", "id"?}
    CLINIC = "clinic"  # a clinic was created, changed, suspended or removed: read the registry


class Changed(StrEnum):
    """What a ``changed`` message is about (hubs cache these for up to 30 seconds)."""

    PERSON = "person"  # a directory entry: {"id": user_id}
    POOL = "pool"  # {"id": pool_id}
    HOURS = "hours"  # the office hours
    WEBHOOKS = "webhooks"  # the webhook subscriptions


Handle = Callable[[Control, str, dict[str, Any]], Awaitable[None]]


async def publish_control(
    redis: RedisClient, kind: Control, tenant: str, channel: str = CONTROL_CHANNEL, **fields: Any
) -> None:
    """Tell every hub (this one included, through its own subscription)."""
    with redis_errors():
        await publish(redis, channel, orjson.dumps({"kind": kind, "tenant": tenant, **fields}))


class ControlListener(Subscriber):
    """Subscribes to the control channel and hands each message to ``handle``. A
    message that does not parse, or whose handling fails, is logged by kind and
    skipped."""

    name = "control channel"

    def __init__(
        self, redis: RedisClient, handle: Handle, channel: str = CONTROL_CHANNEL, poll: float = 1.0
    ) -> None:
        super().__init__(redis, poll)
        self._channel = channel
        self._handle = handle

    def channels(self) -> set[str]:
        return {self._channel}

    async def _process(self, channel: str, raw: Any) -> None:
        try:
            message = orjson.loads(raw)
            kind, tenant = Control(message.pop("kind")), message.pop("tenant")
            if not isinstance(tenant, str):
                raise ValueError("tenant")
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("control channel: a message that does not parse was skipped")
            return
        try:
            await self._handle(kind, tenant, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("control channel: %s failed: %s", kind, type(exc).__name__)
