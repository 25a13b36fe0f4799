"""Presence: which users have at least one live socket, on any hub process.

Each socket is a member of ``hub:presence:{user_id}`` (a sorted set; the clinic's
prefix after ``hub:``) scored by the time it expires; the hub that holds the socket
refreshes the score every third of the TTL. A hub that crashes stops refreshing, so
its sockets expire on their own and no user stays online forever. Transitions (first
device in, last device out) are computed atomically in Redis so two hubs cannot both
announce them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

from channels.client import RedisClient, RedisFailure, redis_errors
from channels.names import presence_key
from hub.core import clock as hub_clock
from hub.core.tenants import DEFAULT_TENANT

# KEYS[1] presence key; ARGV: now, member, expires_at, key ttl seconds.
# Returns 1 when this socket made the user go from offline to online.
_ARRIVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if before == 0 then return 1 end
return 0
"""

# KEYS[1] presence key; ARGV: now, member. Returns 1 when the user is now offline.
_LEAVE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if removed == 1 and redis.call('ZCARD', KEYS[1]) == 0 then return 1 end
return 0
"""


class Presence:
    def __init__(
        self,
        redis: RedisClient,
        process_id: str,
        ttl: float,
        clock: Callable[[], float] = hub_clock.timestamp,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        self._redis = redis
        self._tenant = tenant
        self._clock = clock
        self._process_id = process_id
        self._ttl = ttl
        self._arrive = redis.register_script(_ARRIVE)
        self._leave = redis.register_script(_LEAVE)
        self._local: dict[str, set[str]] = {}  # user_id -> sids on this process

    @property
    def refresh_interval(self) -> float:
        return self._ttl / 3

    def _member(self, sid: str) -> str:
        return f"{self._process_id}:{sid}"

    async def arrive(self, user_id: str, sid: str) -> bool:
        """Record a live socket; True if the user just came online."""
        self._local.setdefault(user_id, set()).add(sid)
        now = self._clock()
        with redis_errors():
            first = await self._arrive(
                keys=[presence_key(self._tenant, user_id)],
                args=[now, self._member(sid), now + self._ttl, int(self._ttl) + 1],
            )
        return bool(first)

    async def leave(self, user_id: str, sid: str) -> bool:
        """Forget a socket; True if it was the user's last one."""
        sids = self._local.get(user_id)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._local[user_id]
        with redis_errors():
            last = await self._leave(
                keys=[presence_key(self._tenant, user_id)], args=[self._clock(), self._member(sid)]
            )
        return bool(last)

    async def refresh(self, sockets: Iterable[tuple[str, str]]) -> None:
        """Push back the expiry of this process's live sockets ``(user_id, sid)``.

        A socket whose arrival could not be recorded (Redis busy or away during a
        connection burst) is added here, so it counts as online within one interval.
        The price: a socket that leaves between the caller's snapshot and this write
        counts as online until its expiry, at most one TTL."""
        expires_at = self._clock() + self._ttl
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id, sid in sockets:
                pipe.zadd(presence_key(self._tenant, user_id), {self._member(sid): expires_at})
                pipe.expire(presence_key(self._tenant, user_id), int(self._ttl) + 1)
            await pipe.execute()

    async def elsewhere(self, user_id: str) -> bool:
        """Whether the user has a live socket on another hub process. True when Redis
        cannot tell: a caller that would skip the other hubs then does not. A socket
        whose arrival could not be recorded counts once the next heartbeat adds it."""
        try:
            members = cast(
                list[str],
                await self._redis.zrangebyscore(
                    presence_key(self._tenant, user_id), f"({self._clock()}", "+inf"
                ),
            )  # decoded responses
        except RedisFailure:
            return True
        mine = self._member("")
        return any(not member.startswith(mine) for member in members)

    async def online(self, user_ids: list[str]) -> dict[str, bool]:
        """Whether each user has a live socket on any hub. Users with a socket on this
        process are online without asking Redis (most chats: both members here)."""
        online = dict.fromkeys((u for u in user_ids if u in self._local), True)
        remote = [u for u in user_ids if u not in online]
        if not remote:
            return online
        now = self._clock()
        with redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in remote:
                    pipe.zcount(presence_key(self._tenant, user_id), f"({now}", "+inf")
                counts = await pipe.execute()
        online.update((user_id, count > 0) for user_id, count in zip(remote, counts, strict=True))
        return online
