"""The Redis clients: the hub's own, and the Socket.IO manager that fans events out.

The manager publishes in batches: the emits made while the previous batch is on its way
go out together in the next one, as one pipelined round trip of PUBLISH commands, one
task sending one batch at a time. The messages are python-socketio's own, so any hub or
emitter on the channel understands them. Before, each emit was its own round trip on
whichever pooled connection was free, so two emits of one process could overtake each
other on the way to another hub (a burst of 40 messages arrived out of seq order); now
they reach Redis, and so every other hub, in the order they were made.

Delivery to this process's own sockets hands the packet to each one's queue inline,
without python-socketio's task per recipient (``hub.compat.socketio.InlineLocalEmits``).

The manager's listener has a client of its own and closes each subscription it leaves.
(python-socketio's Redis manager took its subscription from the publishing client and
dropped it unclosed on a reconnect, which left a live connection nobody read or closed;
the hub builds on ``AsyncPubSubManager`` instead, through its documented hooks.)

Both clients draw from the hub's blocking pool (``channels/client.py``): a burst of 180
concurrent sends once exhausted redis-py's default one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis
from socketio.async_pubsub_manager import AsyncPubSubManager

from channels.client import pool
from channels.names import SOCKETIO_CHANNEL
from hub.compat.socketio import InlineLocalEmits
from hub.core.tasks import Backoff, raise_if_cancelled

log = logging.getLogger("hub.redis")

MAX_BATCH = 256  # PUBLISH commands in one round trip, however long Redis stalled


@dataclass
class _Batch:
    messages: list[dict[str, Any]] = field(default_factory=list)
    sent: asyncio.Event = field(default_factory=asyncio.Event)


class FanoutManager(AsyncPubSubManager, InlineLocalEmits):
    """python-socketio's pub/sub manager on Redis, through the two methods its backends
    implement (``_publish``, ``_listen``): a bounded blocking pool, batched publishes,
    a listener on a client of its own that closes what it leaves.

    The listener's connection has no read timeout (it waits for messages for as long
    as the process lives); a batch gives up after ``timeout`` seconds. An emit
    returns once the PUBLISH carrying it was answered or given up on; a failed PUBLISH
    is logged and not raised, as python-socketio's own managers do. ``messages`` and
    ``batches`` count what Redis accepted.
    """

    name = "hub-redis"

    def __init__(
        self,
        url: str,
        timeout: float,
        channel: str = SOCKETIO_CHANNEL,
        *,
        messages: Counter | None = None,
        batches: Counter | None = None,
        json: Any = None,
    ) -> None:
        super().__init__(channel=channel, json=json)
        self._url = url
        self._timeout = timeout
        self._publisher: Redis | None = None
        self.connected = False  # False: the next batch publishes on a new client
        self._retired: set[asyncio.Task[None]] = set()
        self._batches: deque[_Batch] = deque()  # waiting to be sent, oldest first
        self._sender: asyncio.Task[None] | None = None
        self._messages = messages
        self._batches_sent = batches
        self._listener: Redis | None = None  # the subscription's client, made on first use
        self._subscribed = False  # Redis confirmed the subscription; False again once lost

    def start(self) -> None:
        """Subscribe now rather than at the first connection, as python-socketio
        would: a device that connects to a freshly started hub must hear at once
        what other hubs emit. Idempotent."""
        server = self.server
        if not server.manager_initialized:
            server.manager_initialized = True
            self.initialize()

    async def _publish(self, data: dict[str, Any]) -> None:
        batches = self._batches
        if not batches or len(batches[-1].messages) >= MAX_BATCH:
            batches.append(_Batch())
        batch = batches[-1]
        batch.messages.append(data)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_batches())
        await batch.sent.wait()

    async def _send_batches(self) -> None:
        """Publish waiting batches, oldest first, until none is left; never raises."""
        while self._batches:
            batch = self._batches.popleft()
            try:
                await self._publish_batch(batch.messages)
            except Exception:
                log.exception("fan-out publish failed")
            finally:
                batch.sent.set()

    async def _publish_batch(self, messages: list[dict[str, Any]]) -> None:
        """One pipelined round trip of PUBLISH commands, in order; tried twice (the
        second time on a new client), then logged and dropped."""
        payloads = [self.json.dumps(message) for message in messages]
        for attempt in (1, 2):
            try:
                pipeline = self._client().pipeline(transaction=False)
                for payload in payloads:
                    pipeline.publish(self.channel, payload)
                async with asyncio.timeout(self._timeout):  # the pool has no read timeout
                    await pipeline.execute()
            except Exception as exc:
                self.connected = False
                log.warning(
                    "fan-out: cannot publish %d messages to Redis (%s, attempt %d)",
                    len(payloads),
                    type(exc).__name__,
                    attempt,
                )
                continue
            if self._messages is not None and self._batches_sent is not None:
                self._messages.inc(len(payloads))
                self._batches_sent.inc()
            return

    def _client(self) -> Redis:
        """The publishing client; a new one after a failure, the old one closed in the
        background."""
        if self.connected and self._publisher is not None:
            return self._publisher
        retired, self._publisher = self._publisher, Redis.from_pool(pool(self._url, self._timeout))
        self.connected = True
        if retired is not None:
            task = asyncio.get_running_loop().create_task(retired.aclose())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        return self._publisher

    async def _listen(self) -> AsyncIterator[bytes]:
        """The payloads published on the channel, for as long as the process lives.

        A lost subscription is closed, then made again after a capped backoff; the
        messages published in between are lost (the devices' ``sync`` recovers them).
        """
        if self._listener is None:
            unbounded = pool(self._url, self._timeout)
            unbounded.connection_kwargs["socket_timeout"] = None  # waits for messages
            self._listener = Redis.from_pool(unbounded)
        channel = self.channel.encode()
        backoff = Backoff()
        while True:
            raise_if_cancelled()
            pubsub = self._listener.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                backoff.reset()
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":  # Redis confirmed it
                        self._subscribed = True
                    elif message["type"] == "message" and message["channel"] == channel:
                        yield message["data"]
            except Exception as exc:
                log.warning("fan-out listener: %s; subscribing again", type(exc).__name__)
            finally:
                self._subscribed = False
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await backoff.wait()

    def listening(self) -> bool:
        """True while Redis confirms this process's subscription to the fan-out
        channel: only then does it hear what the other hubs emit."""
        listener = getattr(self, "thread", None)
        return listener is not None and not listener.done() and self._subscribed

    async def close(self) -> None:
        """Stop the listener and close every connection, including retired clients."""
        if self._sender is not None:  # emits made before the shutdown still go out
            await asyncio.wait({self._sender}, timeout=2 * self._timeout)  # two attempts
            if not self._sender.done():
                self._sender.cancel()
                await asyncio.gather(self._sender, return_exceptions=True)
            for batch in self._batches:  # dropped, and nobody left waiting on them
                batch.sent.set()
            self._batches.clear()
        listener = getattr(self, "thread", None)
        if listener is not None:
            listener.cancel()
            await asyncio.wait({listener}, timeout=self._timeout)
        if self._retired:
            await asyncio.wait(set(self._retired), timeout=self._timeout)
        clients = [c for c in (self._publisher, self._listener) if c is not None]
        if clients:
            await asyncio.wait(
                {asyncio.ensure_future(c.aclose()) for c in clients}, timeout=self._timeout
            )
