"""The hub's Redis clients: how they connect, and how their errors become the hub's.

Every client draws from a *blocking* pool of at most ``POOL_SIZE`` connections: under
a burst a command waits (up to the timeout) for a free connection instead of failing.
redis-py's default pool raises ``MaxConnectionsError`` past 100 connections.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from hub.core.errors import Unavailable

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
