"""The Redis clients: the hub's own, and the Socket.IO manager that fans events out.

Routed: each hub hears only what is addressed to the rooms that have a socket on it.
An emit to a room goes to that room's channel (``<channel>#<room>``), and a hub is
subscribed to a room's channel while at least one of its sockets is in the room: it
subscribes when the first joins, and unsubscribes when the last leaves. What every hub
must hear (an emit to the whole namespace, a disconnect or a room change of a socket
elsewhere) goes to ``<channel>`` itself, and an ack on its way back to the hub that
asked for it to ``<channel>@<host id>``. A socket's own room is never published: a
socket is on one hub, and an emit to a socket of this hub is delivered here only.
An emit to several rooms goes to each room's channel with one message id, and a hub
subscribed to more than one of them handles it once. ``room_ready`` resolves once
Redis confirmed a room's subscription, so that a connection is accepted, or a
consultation joined, only when this hub will hear what is published to it from then
on; what was stored before is the device's ``sync``.

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
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis, RedisCluster
from socketio.async_pubsub_manager import AsyncPubSubManager

from channels.client import (
    MESSAGE,
    SUBSCRIBED,
    UNSUBSCRIBED,
    RedisClient,
    Subscription,
    connect,
    is_cluster,
    pool,
)
from channels.names import SOCKETIO_CHANNEL, host_channel, room_channel
from hub.compat.socketio import InlineLocalEmits
from hub.core.logs import Throttle
from hub.core.tasks import Backoff, raise_if_cancelled

log = logging.getLogger("hub.redis")

MAX_BATCH = 256  # PUBLISH commands in one round trip, however long Redis stalled
RECENT_IDS = 4096  # ids of multi-room emits handled lately: each is handled once


@dataclass
class _Batch:
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (channel, message)
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
        received: Counter | None = None,
        json: Any = None,
    ) -> None:
        super().__init__(channel=channel, json=json)
        self._url = url
        self._timeout = timeout
        self._publisher: RedisClient | None = None
        self.connected = False  # False: the next batch publishes on a new client
        self._retired: set[asyncio.Task[None]] = set()
        self._batches: deque[_Batch] = deque()  # waiting to be sent, oldest first
        self._sender: asyncio.Task[None] | None = None
        self._messages = messages
        self._batches_sent = batches
        self._received = received
        self._listener: RedisClient | None = None  # the subscription's client, made on first use
        self._subscribed = False  # Redis confirmed the subscription; False again once lost
        self._rooms: set[str] = set()  # rooms with a local socket: their channels are wanted
        self._confirmed: set[str] = set()  # channels Redis confirmed on this subscription
        self._waiting: dict[str, asyncio.Future[None]] = {}  # room channel -> its confirmation
        self._changed = asyncio.Event()  # the wanted rooms changed: subscribe or unsubscribe
        self._recent: OrderedDict[str, None] = OrderedDict()  # ids of multi-room emits seen
        self._unconfirmed = Throttle()  # joins that went on unconfirmed (Redis away)
        self._unpublished = Throttle()  # failed attempts to publish a batch
        self._leaving: dict[str, int] = {}  # channel -> UNSUBSCRIBEs sent, not yet answered

    def start(self) -> None:
        """Subscribe now rather than at the first connection, as python-socketio
        would: a device that connects to a freshly started hub must hear at once
        what other hubs emit. Idempotent."""
        server = self.server
        if not server.manager_initialized:
            server.manager_initialized = True
            self.initialize()

    # -- publishing --------------------------------------------------------------------

    def _room_channel(self, room: str) -> str:
        return room_channel(self.channel, room)

    def _host_channel(self, host_id: str) -> str:
        return host_channel(self.channel, host_id)

    def _channels(self, message: dict[str, Any]) -> list[str]:
        """Where a manager message goes: its rooms' channels, the hub that asked for an
        ack, or every hub; nowhere for an emit to sockets of this hub only. A hub
        subscribed to a room reads its own emits to it back, and drops them (by host
        id), as it did when every emit went to one channel."""
        method = message.get("method")
        if method == "callback":
            return [self._host_channel(message["host_id"])]
        if method not in ("emit", "close_room") or message.get("room") is None:
            return [self.channel]  # the whole namespace, or a socket on another hub
        room = message["room"]
        namespace = message.get("namespace") or "/"
        channels: dict[str, None] = {}
        for name in room if isinstance(room, list) else [room]:
            if self.is_connected(name, namespace):
                continue  # a socket of this hub: delivered here, nowhere else
            # Rooms are named kind:id (hub/core/rooms.py); a socket's own room is its sid.
            channels[self._room_channel(name) if ":" in name else self.channel] = None
        return list(channels)

    async def _publish(self, data: dict[str, Any]) -> None:
        channels = self._channels(data)
        if not channels:
            return
        if len(channels) > 1:
            data = {**data, "mid": uuid.uuid4().hex}  # handled once by a hub that hears several
        batches = self._batches
        if not batches or len(batches[-1].messages) + len(channels) > MAX_BATCH:
            batches.append(_Batch())
        batch = batches[-1]
        batch.messages.extend((channel, data) for channel in channels)
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

    async def _publish_batch(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """One pipelined round trip of PUBLISH commands, in order; tried twice (the
        second time on a new client), then logged and dropped."""
        encoded: dict[int, str] = {}  # a message to several rooms is encoded once
        payloads = []
        for channel, message in messages:
            payload = encoded.get(id(message))
            if payload is None:
                payload = encoded[id(message)] = self.json.dumps(message)
            payloads.append((channel, payload))
        for _ in (1, 2):
            try:
                client = self._client()
                pipeline = client.pipeline(transaction=False)
                # On a cluster each goes to its channel's shard, in order per shard.
                send = pipeline.spublish if isinstance(client, RedisCluster) else pipeline.publish
                for channel, payload in payloads:
                    send(channel, payload)
                async with asyncio.timeout(self._timeout):  # the pool has no read timeout
                    await pipeline.execute()
            except Exception as exc:
                self.connected = False
                if count := self._unpublished.note():
                    log.warning(
                        "fan-out: %d attempts to publish to Redis failed (the last: %s)",
                        count,
                        type(exc).__name__,
                    )
                continue
            if self._messages is not None and self._batches_sent is not None:
                self._messages.inc(len(payloads))
                self._batches_sent.inc()
            return

    def _client(self) -> RedisClient:
        """The publishing client; on a single node, a new one after a failure, the old
        one closed in the background. A cluster client is kept: it reads the topology
        again by itself, from every node it knows (a new one would know only the URL's)."""
        if self._publisher is not None and (self.connected or is_cluster(self._url)):
            return self._publisher
        retired, self._publisher = self._publisher, connect(self._url, self._timeout, decode=False)
        self.connected = True
        if retired is not None:
            task = asyncio.get_running_loop().create_task(retired.aclose())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        return self._publisher

    # -- listening ---------------------------------------------------------------------

    def basic_enter_room(
        self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if room is not None and room != sid and room not in self._rooms:
            self._rooms.add(room)  # the first socket of this hub in the room
            self._changed.set()

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)
        if room in self._rooms and not any(room in rooms for rooms in self.rooms.values()):
            self._rooms.discard(room)  # the last one left
            self._changed.set()
            self._confirm(self._room_channel(room))  # nobody waits on it any more

    async def room_ready(self, room: str) -> None:
        """Return once Redis confirmed this hub's subscription to ``room``'s channel,
        or after the Redis timeout (logged: the room's devices catch up with ``sync``)."""
        channel = self._room_channel(room)
        if room not in self._rooms or channel in self._confirmed:
            return
        waiting = self._waiting.get(channel)
        if waiting is None:
            waiting = self._waiting[channel] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.shield(waiting)
        except TimeoutError:
            if count := self._unconfirmed.note():
                log.warning(
                    "fan-out: %d joins went on without their room's subscription confirmed "
                    "(their devices catch up with sync)",
                    count,
                )

    def _confirm(self, channel: str) -> None:
        waiting = self._waiting.pop(channel, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def _follow_rooms(self, subscription: Subscription) -> None:
        """Subscribe to the channels of the rooms this hub's sockets joined, and leave
        those they all left, as they change, on ``subscription``."""
        requested: set[str] = set()
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                wanted = {self._room_channel(room) for room in self._rooms}
                joined, left = wanted - requested, requested - wanted
                if joined:
                    await subscription.subscribe(*joined)
                if left:
                    # Unconfirmed from now: a socket that joins again waits for the new
                    # SUBSCRIBE's confirmation, not the old one's.
                    self._confirmed.difference_update(left)
                    for channel in left:
                        self._leaving[channel] = self._leaving.get(channel, 0) + 1
                    await subscription.unsubscribe(*left)
                requested = wanted
        except Exception as exc:  # the connection is broken: the listener starts over
            log.warning("fan-out: cannot follow the rooms (%s)", type(exc).__name__)
            await subscription.abort(exc)

    def _decode(self, raw: bytes) -> dict[str, Any] | None:
        """A message from Redis; None for a copy of a multi-room emit handled already."""
        if self._received is not None:
            self._received.inc()
        try:
            message = self.json.loads(raw)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        message_id = message.get("mid")
        if message_id is not None:
            if message_id in self._recent:
                return None
            self._recent[message_id] = None
            if len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
        return message

    async def _listen(self) -> AsyncIterator[dict[str, Any]]:
        """The messages published to this hub: to every hub, to its rooms, to itself;
        for as long as the process lives.

        A lost subscription is closed, then made again (with every room of this hub)
        after a capped backoff; the messages published in between are lost (the
        devices' ``sync`` recovers them).
        """
        if self._listener is None:
            if is_cluster(self._url):  # each shard's subscription has a client of its own
                self._listener = connect(self._url, self._timeout, decode=False)
            else:
                unbounded = pool(self._url, self._timeout)
                unbounded.connection_kwargs["socket_timeout"] = None  # waits for messages
                self._listener = Redis.from_pool(unbounded)
        backoff = Backoff()
        while True:
            raise_if_cancelled()
            subscription = Subscription(self._listener)
            follower: asyncio.Task[None] | None = None
            try:
                await subscription.open()
                await subscription.subscribe(self.channel, self._host_channel(self.host_id))
                backoff.reset()
                self._changed.set()  # every room of this hub, on this subscription
                follower = asyncio.get_running_loop().create_task(self._follow_rooms(subscription))
                while True:
                    received = await subscription.next()
                    if received is None:
                        continue
                    kind, channel, data = received
                    if kind == MESSAGE:
                        decoded = self._decode(data)
                        if decoded is not None:
                            yield decoded
                    elif kind == SUBSCRIBED:  # Redis confirmed it
                        if channel == self.channel:
                            self._subscribed = True
                        # Unless an UNSUBSCRIBE sent after it is still on its way (a room
                        # left, joined and left again): that one ends it.
                        if not self._leaving.get(channel):
                            self._confirmed.add(channel)
                            self._confirm(channel)
                    elif kind == UNSUBSCRIBED:
                        self._confirmed.discard(channel)
                        if self._leaving.get(channel, 0) > 1:
                            self._leaving[channel] -= 1
                        else:
                            self._leaving.pop(channel, None)
            except Exception as exc:
                log.warning("fan-out listener: %s; subscribing again", type(exc).__name__)
            finally:
                if follower is not None:
                    follower.cancel()
                    await asyncio.gather(follower, return_exceptions=True)
                self._subscribed = False
                self._confirmed.clear()
                self._leaving.clear()
                await subscription.aclose()
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
