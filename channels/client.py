"""The hub's Redis clients: how they connect, how their errors become the hub's, and
the pub/sub subscriptions that channel listeners keep alive (``Subscription``,
``Subscriber``).

A single node (``redis://``, ``rediss://``, ``unix://``): every client draws from a
*blocking* pool of at most ``POOL_SIZE`` connections, so that under a burst a command
waits (up to the timeout) for a free connection instead of failing (redis-py's default
pool raises ``MaxConnectionsError`` past 100 connections).

A Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``, any one node: the
others are discovered from it): redis-py's cluster client, which follows moved slots
and failed-over masters, with at most ``CLUSTER_POOL_SIZE`` connections per node (it
has no blocking pool). Pub/sub is sharded there (``SSUBSCRIBE``/``SPUBLISH``, Redis 7):
a channel lives on the shard that owns its slot, and only that shard carries it.
Every command the hub sends touches one key, or keys that share a hash tag
(``channels/names.py``), so none crosses slots.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from hub.core.errors import Unavailable
from hub.core.tasks import Backoff, raise_if_cancelled

log = logging.getLogger("hub.redis")

POOL_SIZE = 64
CLUSTER_POOL_SIZE = 256  # per node: a burst past it fails (MaxConnectionsError) instead of waiting

RedisClient: TypeAlias = Redis | RedisCluster
# What a Redis command may raise when Redis fails: a cluster none of whose nodes answers
# raises RedisClusterException, which is not a RedisError.
RedisFailure = (RedisError, RedisClusterException)


def pool(url: str, timeout: float, reserved: int = 0, **options: Any) -> BlockingConnectionPool:
    return BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE + reserved,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        # After a Redis restart every pooled connection is dead; without a retry each
        # one fails one command (a 503 from /health/ready, a lost presence update)
        # before it is replaced. A connection error is retried once on a new one.
        retry=Retry(ExponentialBackoff(cap=timeout, base=0.05), retries=1),
        retry_on_error=[RedisConnectionError],
        **options,
    )


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme.endswith("+cluster")


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL as redis-py takes it (its first node, ``redis://`` or
    ``rediss://``), and the further nodes it names: ``redis+cluster://a:6379,b:6379/0``.
    One node is enough to discover the others, but a client made while that one is
    down needs another to start from."""
    scheme, _, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    first, *others = hosts.split(",")
    seeds = []
    for other in others:
        host, _, port = other.rpartition(":")
        seeds.append((host or other, int(port) if port.isdigit() else 6379))
    plain = f"{scheme.removesuffix('+cluster')}://{userinfo}{at}{first}{slash}{tail}"
    return plain, seeds


def connect(url: str, timeout: float, reserved: int = 0, *, decode: bool = True) -> RedisClient:
    """A client whose commands give up after ``timeout`` seconds; close with ``aclose()``.

    ``reserved``: connections held for good by listeners (a blocking stream read, a
    pub/sub subscription), added to the pool so that commands keep ``POOL_SIZE``.
    ``decode``: replies as ``str`` rather than ``bytes``.
    """
    if not is_cluster(url):
        return Redis.from_pool(pool(url, timeout, reserved, decode_responses=decode))
    first, others = cluster_seeds(url)
    return RedisCluster.from_url(
        first,
        startup_nodes=[ClusterNode(host, port) for host, port in others],
        max_connections=CLUSTER_POOL_SIZE + reserved,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        # Each attempt after a connection error reads the cluster's topology again,
        # so a command sent while a master fails over lands on its replica once the
        # replica took over (within the cluster's node timeout and an election).
        retry=Retry(ExponentialBackoff(cap=timeout, base=0.1), retries=4),
        decode_responses=decode,
    )


def reserve(redis: RedisClient, count: int) -> None:
    """Grow (or, negative, shrink) a single node's pool by ``count`` connections held
    for good by listeners started or stopped while the hub runs, so that commands keep
    ``POOL_SIZE``. A cluster's per-node limit (``CLUSTER_POOL_SIZE``) is left as is."""
    if isinstance(redis, Redis):
        redis.connection_pool.max_connections += count


async def ping(redis: RedisClient) -> None:
    """Raise unless Redis answers: on a cluster, every master (a replica that is down
    costs nothing until its master fails)."""
    if isinstance(redis, RedisCluster):
        await redis.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        await redis.ping()


async def publish(redis: RedisClient, channel: str, data: Any) -> None:
    """PUBLISH on a single node, SPUBLISH (to the channel's shard) on a cluster."""
    if isinstance(redis, RedisCluster):
        await redis.spublish(channel, data)
    else:
        await redis.publish(channel, data)


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn redis-py's errors into the hub's: whatever fails in Redis is
    ``Unavailable`` to the caller, with the cause chained."""
    try:
        yield
    except RedisFailure as exc:
        raise Unavailable() from exc


MESSAGE, SUBSCRIBED, UNSUBSCRIBED = "message", "subscribe", "unsubscribe"
_KINDS = {
    "message": MESSAGE, "smessage": MESSAGE,
    "subscribe": SUBSCRIBED, "ssubscribe": SUBSCRIBED,
    "unsubscribe": UNSUBSCRIBED, "sunsubscribe": UNSUBSCRIBED,
}  # fmt: skip
Received: TypeAlias = tuple[str, str, Any]  # (MESSAGE | SUBSCRIBED | UNSUBSCRIBED, channel, data)


class Subscription:
    """Channels listened to on one set of connections, alike on a single node and on a
    cluster; made again from scratch by its owner after any failure.

    A single node: one connection, ``SUBSCRIBE``. A cluster: a connection to each
    master that owns one of the channels, opened as the first of them is subscribed
    and read by a task of its own; ``SSUBSCRIBE`` one channel per command (channels of
    different slots cannot share one), or, with ``sharded=False``, ``SUBSCRIBE`` (for
    channels that publishers outside the hub ``PUBLISH`` to, which reach every node).

    ``next()`` returns what Redis sent, in the order each connection received it, and
    raises when any connection failed (or, on a cluster, a slot moved away under a
    subscribed channel): the caller closes this subscription and makes a new one,
    which reads the cluster's topology again.
    """

    def __init__(self, redis: RedisClient, *, sharded: bool = True) -> None:
        self._redis = redis
        self._sharded = sharded
        self._single: PubSub | None = None
        self._nodes: dict[str, PubSub] = {}  # a cluster master's name -> its connection
        self._owners: dict[str, str] = {}  # channel -> the master it is subscribed on
        self._readers: set[asyncio.Task[None]] = set()
        self._received: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._leaving: dict[str, int] = {}  # channel -> unsubscribes not yet confirmed
        self._failed: BaseException | None = None

    async def open(self) -> None:
        """Read the cluster's current topology (nothing on a single node)."""
        if isinstance(self._redis, RedisCluster):
            await self._redis.initialize()  # the first time (and what aclose() closes)
            await self._redis.nodes_manager.initialize()  # after that

    async def subscribe(self, *channels: str) -> None:
        if not isinstance(self._redis, RedisCluster):
            await self._single_pubsub().subscribe(*channels)
            return
        for channel in channels:
            pubsub, new = self._node_pubsub(channel)
            if self._sharded:
                await pubsub.ssubscribe(channel)
            else:
                await pubsub.subscribe(channel)
            if new:  # read once its connection is made
                reader = asyncio.get_running_loop().create_task(self._read(pubsub))
                self._readers.add(reader)

    async def unsubscribe(self, *channels: str) -> None:
        if not isinstance(self._redis, RedisCluster):
            await self._single_pubsub().unsubscribe(*channels)
            return
        for channel in channels:
            owner = self._owners.pop(channel, None)
            pubsub = self._nodes.get(owner) if owner is not None else None
            if pubsub is None:
                continue
            self._leaving[channel] = self._leaving.get(channel, 0) + 1
            if self._sharded:
                await pubsub.sunsubscribe(channel)
            else:
                await pubsub.unsubscribe(channel)

    async def next(self, timeout: float | None = None) -> Received | None:
        """What Redis sent next; None after ``timeout`` seconds without anything."""
        if self._failed is not None:
            raise self._failed
        if self._single is not None:
            message = await self._single.get_message(timeout=timeout)
        else:
            try:
                async with asyncio.timeout(timeout):
                    item = await self._received.get()
            except TimeoutError:
                return None
            if isinstance(item, BaseException):
                raise item
            message = item
        if message is None:
            return None
        kind = _KINDS.get(_text(message["type"]), "")
        channel = _text(message["channel"])
        if kind == UNSUBSCRIBED and self._nodes:
            if self._leaving.get(channel, 0) > 1:
                self._leaving[channel] -= 1
            elif self._leaving.pop(channel, None) is None:
                # Not asked for: the slot moved to another shard, which Redis says by
                # unsubscribing its channels. A new subscription finds the new owner.
                raise RedisConnectionError(f"the shard of {channel} moved")
        return kind, channel, message["data"]

    async def abort(self, exc: BaseException) -> None:
        """Make ``next()`` raise ``exc``: the subscription cannot be kept."""
        self._failed = exc
        self._received.put_nowait(exc)
        if self._single is not None:
            await self._single.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._single is not None:
            await self._single.aclose()  # type: ignore[no-untyped-call]
        for pubsub in self._nodes.values():
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await pubsub.connection_pool.disconnect()  # its own pool, made here

    def _single_pubsub(self) -> PubSub:
        if self._single is None:
            assert isinstance(self._redis, Redis)
            self._single = self._redis.pubsub()
        return self._single

    def _node_pubsub(self, channel: str) -> tuple[PubSub, bool]:
        """The connection to the master that owns ``channel``'s slot, and whether it
        is new."""
        assert isinstance(self._redis, RedisCluster)
        node = self._redis.get_node_from_key(channel)
        if node is None:  # the slot has no master for now (a failover under way)
            raise RedisConnectionError(f"no shard serves {channel} for now")
        self._owners[channel] = node.name
        pubsub = self._nodes.get(node.name)
        if pubsub is not None:
            return pubsub, False
        options = {**node.connection_kwargs, "socket_timeout": None}  # waits for messages
        own = ConnectionPool(connection_class=node.connection_class, **options)
        pubsub = self._nodes[node.name] = Redis.from_pool(own).pubsub()
        return pubsub, True

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    self._received.put_nowait(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to next(), which raises it
            self._received.put_nowait(exc)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Subscriber:
    """Pub/sub channels, listened to for as long as the process runs: each message's
    channel and data go to ``_process``, in order; the channels are ``channels()``'s,
    followed within ``poll`` seconds when that set changes. After a Redis error the
    subscription is made again with all of them, backing off from 0.1 s to 5 s, and
    each one left is closed. ``alive()`` while Redis answers (a poll returns every
    ``poll`` seconds, message or not): readiness fails on a listener that died
    quietly. ``sharded``: on a cluster, the channels are shard channels (``SPUBLISH``)."""

    name = "pub/sub"  # for the log
    sharded = True

    def __init__(self, redis: RedisClient, poll: float = 1.0) -> None:
        self._redis = redis
        self._poll = poll
        self.last_ok = 0.0

    def alive(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - self.last_ok < 11.0

    def channels(self) -> set[str]:
        raise NotImplementedError

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            subscription = Subscription(self._redis, sharded=self.sharded)
            subscribed: set[str] = set()
            try:
                await subscription.open()
                while True:
                    raise_if_cancelled()
                    wanted = self.channels()
                    if wanted - subscribed:
                        await subscription.subscribe(*(wanted - subscribed))
                    if subscribed - wanted:
                        await subscription.unsubscribe(*(subscribed - wanted))
                    subscribed = wanted
                    self.last_ok = time.monotonic()
                    received = await subscription.next(timeout=self._poll)
                    self.last_ok = time.monotonic()
                    backoff.reset()
                    if received is not None and received[0] == MESSAGE:
                        await self._process(received[1], received[2])
            except asyncio.CancelledError:
                raise
            except (*RedisFailure, OSError) as exc:
                log.warning("%s: %s; reconnecting", self.name, type(exc).__name__)
                await backoff.wait()
            finally:
                await subscription.aclose()

    async def _process(self, channel: str, raw: Any) -> None:
        raise NotImplementedError
