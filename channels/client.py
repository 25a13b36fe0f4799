"""The hub's Redis clients: how they connect, how their errors become the hub's, and
the pub/sub subscription that every channel listener keeps alive (``Subscriber``).

Every client draws from a *blocking* pool of at most ``POOL_SIZE`` connections: under
a burst a command waits (up to the timeout) for a free connection instead of failing.
redis-py's default pool raises ``MaxConnectionsError`` past 100 connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from hub.core.errors import Unavailable
from hub.core.tasks import Backoff, raise_if_cancelled

log = logging.getLogger("hub.redis")

POOL_SIZE = 64


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


def connect(url: str, timeout: float, reserved: int = 0) -> Redis:
    """A client whose commands give up after ``timeout`` seconds; close with ``aclose()``.

    ``reserved``: connections held for good by listeners (a blocking stream read, a
    pub/sub subscription), added to the pool so that commands keep ``POOL_SIZE``.
    """
    return Redis.from_pool(pool(url, timeout, reserved, decode_responses=True))


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn redis-py's errors into the hub's: whatever fails in Redis is
    ``Unavailable`` to the caller, with the cause chained."""
    try:
        yield
    except RedisError as exc:
        raise Unavailable() from exc


class Subscriber:
    """One pub/sub channel, listened to for as long as the process runs: each message's
    data goes to ``_process``, in order; after a Redis error the subscription is made
    again, backing off from 0.1 s to 5 s, and each one left is closed. ``alive()`` while
    Redis answers (a poll returns every ``poll`` seconds, message or not): readiness
    fails on a listener that died quietly."""

    name = "pub/sub"  # for the log

    def __init__(self, redis: Redis, channel: str, poll: float = 1.0) -> None:
        self._redis = redis
        self._channel = channel
        self._poll = poll
        self.last_ok = 0.0

    def alive(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - self.last_ok < 11.0

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.last_ok = time.monotonic()
                while True:
                    raise_if_cancelled()
                    message = await pubsub.get_message(timeout=self._poll)
                    self.last_ok = time.monotonic()
                    backoff.reset()
                    if message is not None:
                        await self._process(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("%s: %s; reconnecting", self.name, type(exc).__name__)
                await backoff.wait()
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _process(self, raw: Any) -> None:
        raise NotImplementedError
