"""Signed webhooks out: what happened, told to the clinic's other systems.

A back-end subscribes (``PUT /api/v1/webhooks/{name}``) to event types. Each event is
written to the outbox (storage/webhooks.py), one row per subscription, before it is
sent; every hub delivers what is due, one row at a time per claim. A delivery is a
POST of ``{type, timestamp, data}`` signed as Standard Webhooks specifies
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256
of "id.timestamp.body">``); ``webhook-id`` stays the same on every try, so a receiver
can drop repeats. A 2xx settles it; anything else is tried again after 5 s, 20 s,
80 s, ... (four times longer each time, at most 10 hours apart) until a day has
passed, then it is dead, until a replay.

Payloads carry ids and states, never protected health information, unless the
subscription asked for it (``phi``) and its URL is HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson

from hub.core import clock
from hub.core.errors import HubError
from hub.core.metrics import Metrics
from hub.core.protocol import iso
from storage.webhooks import WebhookStore

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
MAX_DELAY = 10 * 3600.0  # seconds between two tries, at most
SUBSCRIPTIONS_TTL = 10.0  # seconds a hub keeps its copy of the subscriptions


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret; ValueError if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a secret is whsec_ followed by base64")
    key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    if not 24 <= len(key) <= 64:
        raise ValueError("a secret's key is 24 to 64 bytes")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.digest(secret_key(secret), signed, hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode()


def signing_secrets(subscription: dict[str, Any], now: datetime) -> list[str]:
    """The subscription's secret, and the one it replaced while its overlap lasts: a
    receiver that has either accepts the delivery (Standard Webhooks allows several
    space-separated ``v1,`` signatures in one header)."""
    secrets = [subscription["secret"]]
    until = subscription.get("previous_until")
    if until is not None and subscription.get("previous_secret"):
        if (until if until.tzinfo else until.replace(tzinfo=UTC)) > now:
            secrets.append(subscription["previous_secret"])
    return secrets


class Webhooks:
    def __init__(
        self,
        store: WebhookStore,
        timeout: float,
        first_retry: float,
        give_up_after: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self._metrics = metrics or Metrics()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._first_retry = first_retry
        self._give_up_after = timedelta(seconds=give_up_after)
        self._cached: list[dict[str, Any]] = []
        self._cached_at = -SUBSCRIPTIONS_TTL
        # Set by whoever runs the deliveries (hub.server.background): an event queued
        # here is delivered at once, not at the next look.
        self.kick: Callable[[], None] = lambda: None
        self._session: aiohttp.ClientSession | None = None

    def forget_subscriptions(self) -> None:
        """A subscription changed here: read them again at the next event."""
        self._cached_at = -SUBSCRIPTIONS_TTL

    async def emit(
        self,
        event_type: str,
        key: str,
        data: Mapping[str, Any],
        phi: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue ``event_type`` (``key`` names the occurrence: the same key is queued once)
        for every subscription to it. ``phi`` is added to ``data`` only for
        subscriptions that asked for it over HTTPS. Never raises: an event that cannot
        be queued is logged (the act it reports has happened)."""
        try:
            subscriptions = await self._subscriptions()
            rows = []
            now = iso(clock.now())
            for subscription in subscriptions:
                if event_type not in subscription["events"]:
                    continue
                body = dict(data)
                if phi and subscription.get("phi") and subscription["url"].startswith("https://"):
                    body.update(phi)
                rows.append(
                    {
                        "_id": f"{subscription['_id']}:{event_type}:{key}",
                        "webhook": subscription["_id"],
                        "type": event_type,
                        "payload": {"type": event_type, "timestamp": now, "data": body},
                    }
                )
            if rows:
                await self.store.enqueue(rows)
                self.kick()
        except HubError as exc:
            log.warning("webhook event %s key=%s not queued: %s", event_type, key, exc.code)

    async def _subscriptions(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._cached_at >= SUBSCRIPTIONS_TTL:
            self._cached = await self.store.all()
            self._cached_at = time.monotonic()
        return self._cached

    # -- delivery ------------------------------------------------------------------------

    async def run_once(self) -> None:
        """Deliver what is due. Run at once when an event was queued here, else at
        least every second (retries coming due, events queued by other
        hubs)."""
        try:
            # A clinic without subscriptions has nothing queued: no claim (most
            # clinics; a subscription made on any hub reaches this one's cache through
            # the control channel).
            if not await self._subscriptions():
                return
            while (row := await self.store.claim_due()) is not None:
                await self._deliver(row)
        except HubError as exc:
            log.warning("webhook deliveries: %s", exc.code)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _deliver(self, row: dict[str, Any]) -> None:
        subscription = next((s for s in await self.store.all() if s["_id"] == row["webhook"]), None)
        if subscription is None:
            await self.store.failed(row["_id"], "the subscription was deleted", None)
            return
        body = orjson.dumps(row["payload"])
        timestamp = int(clock.timestamp())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": row["_id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(
                sign(secret, row["_id"], timestamp, body)
                for secret in signing_secrets(subscription, clock.now())
            ),
        }
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(subscription["url"], data=body, headers=headers) as r:
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._retry(row, type(exc).__name__)
            return
        if 200 <= status < 300:
            await self.store.delivered(row["_id"], status)
            self._metrics.webhook_deliveries.labels("delivered").inc()
            log.info("webhook %s delivered to=%s", row["_id"], subscription["_id"])
        else:
            await self._retry(row, f"HTTP {status}")

    async def _retry(self, row: dict[str, Any], error: str) -> None:
        delay = min(MAX_DELAY, self._first_retry * 4 ** int(row.get("attempts", 0)))
        retry_at = clock.now() + timedelta(seconds=delay)
        if retry_at - row["created_at"] > self._give_up_after:
            log.warning(
                "webhook %s dead after %d tries: %s", row["_id"], row["attempts"] + 1, error
            )
            await self.store.failed(row["_id"], error, None)
            self._metrics.webhook_deliveries.labels("dead").inc()
            return
        await self.store.failed(row["_id"], error, retry_at)
        self._metrics.webhook_deliveries.labels("retry").inc()
