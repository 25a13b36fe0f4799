"""Emits from a process that holds no socket (a Celery worker), to the hubs that do.

python-socketio's write-only manager, through the hook its backends implement
(``_publish``), on the hub's routed channels (``channels/fanout.py``): an emit to a
room goes to that room's channel, so only the hubs with a socket in the room read it;
on a Redis Cluster, with ``SPUBLISH`` to the channel's shard. Synchronous, as Celery's
tasks are.
"""

from __future__ import annotations

import logging
from typing import Any

from redis import Redis
from redis.cluster import ClusterNode, RedisCluster
from socketio.pubsub_manager import PubSubManager

from channels.client import RedisFailure, cluster_seeds, is_cluster
from channels.names import SOCKETIO_CHANNEL, room_channel

log = logging.getLogger("hub.redis")


class RoomEmitter(PubSubManager):
    """``emit(event, data, room=...)`` reaches the room's sockets on every hub. A
    PUBLISH that fails is tried once more (redis-py connects again), then logged and
    dropped, as python-socketio's own managers do (the devices' ``sync`` has it)."""

    name = "hub-emitter"

    def __init__(self, url: str, timeout: float, channel: str = SOCKETIO_CHANNEL) -> None:
        super().__init__(channel=channel, write_only=True)
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        self._redis: Redis | RedisCluster
        if is_cluster(url):
            first, others = cluster_seeds(url)
            seeds = [ClusterNode(host, port) for host, port in others]  # type: ignore[no-untyped-call]
            self._redis = RedisCluster.from_url(first, startup_nodes=seeds, **options)
        else:
            self._redis = Redis.from_url(url, **options)

    def _publish(self, data: dict[str, Any]) -> None:
        room = data.get("room")
        # Rooms are named kind:id (hub/core/rooms.py); a socket's own id goes to every hub.
        if isinstance(room, str) and ":" in room:
            channel = room_channel(self.channel, room)
        else:
            channel = self.channel
        payload = self.json.dumps(data)
        for attempt in (1, 2):
            try:
                if isinstance(self._redis, RedisCluster):
                    self._redis.spublish(channel, payload)
                else:
                    self._redis.publish(channel, payload)
                return
            except RedisFailure as exc:
                log.warning(
                    "emitter: cannot publish to Redis (%s, attempt %d)", type(exc).__name__, attempt
                )

    def close(self) -> None:
        self._redis.close()
