"""The Redis clients: the hub's own, and the Socket.IO manager that fans events out.

Both draw from a *blocking* pool of at most ``POOL_SIZE`` connections: under a burst a
command waits (up to the timeout) for a free connection instead of failing. redis-py's
default pool raises ``MaxConnectionsError`` past 100 connections, and python-socketio's
manager reacts to a failed publish by building a new client and dropping the old one
with its connections still open; a burst of 180 concurrent sends was enough for that.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from channels.keys import SOCKETIO_CHANNEL

log = logging.getLogger("hub.redis")

POOL_SIZE = 64


def _pool(url: str, timeout: float, **options: Any) -> BlockingConnectionPool:
    return BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
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


def connect(url: str, timeout: float) -> Redis:
    """A client whose commands give up after ``timeout`` seconds; close with ``aclose()``."""
    return Redis.from_pool(_pool(url, timeout, decode_responses=True))


class FanoutManager(socketio.AsyncRedisManager):
    """python-socketio's Redis manager, on a bounded blocking pool, closing what it replaces.

    The listener's connection has no read timeout (it waits for messages for as long
    as the process lives); publishes time out after ``timeout`` seconds.
    """

    def __init__(self, url: str, timeout: float, channel: str = SOCKETIO_CHANNEL,
                 **kwargs: Any) -> None:
        super().__init__(url, channel=channel, **kwargs)
        self._timeout = timeout
        self._retired: set[asyncio.Task[None]] = set()

    def _redis_connect(self) -> None:
        retired: Redis | None = getattr(self, "redis", None)
        pool = _pool(self.redis_url, self._timeout)
        pool.connection_kwargs["socket_timeout"] = None  # pub/sub listener blocks on read
        self.redis = Redis.from_pool(pool)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True
        if retired is not None:
            task = asyncio.get_running_loop().create_task(retired.aclose())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    def listening(self) -> bool:
        """False once the fan-out listener has ended: this process would no longer hear
        other hubs' emits. python-socketio starts it at the first connection; before
        that there is nobody here to deliver to, which counts as listening."""
        listener = getattr(self, "thread", None)
        return listener is None or not listener.done()

    async def close(self) -> None:
        """Stop the listener and close every connection, including retired clients."""
        listener = getattr(self, "thread", None)
        if listener is not None:
            listener.cancel()
            # Bounded: python-socketio's listener may be inside its own reconnect loop.
            await asyncio.wait({listener}, timeout=self._timeout)
        if self._retired:
            await asyncio.wait(set(self._retired), timeout=self._timeout)
        if self.redis is not None:
            await asyncio.wait({asyncio.ensure_future(self.redis.aclose())}, timeout=self._timeout)
