"""The Redis client and the Socket.IO manager that fans events out across hub processes."""

from __future__ import annotations

import socketio
from redis.asyncio import Redis

from channels.keys import SOCKETIO_CHANNEL


def connect(url: str, timeout: float) -> Redis:
    """A client whose commands give up after ``timeout`` seconds."""
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        decode_responses=True,
    )


def socketio_manager(url: str, channel: str = SOCKETIO_CHANNEL) -> socketio.AsyncRedisManager:
    """Every emit goes through Redis pub/sub, so a user's devices on other hub processes get it."""
    return socketio.AsyncRedisManager(url, channel=channel)
