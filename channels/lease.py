"""A lease in Redis: one holder at a time among the hubs, for as long as it renews.

The key holds the holder's id and expires ``ttl`` seconds after the last ``hold``;
a holder that stops renewing (it died, or lost Redis) hands the lease to the next hub
that asks after that. Used where one hub of the fleet is enough (``SWEEP_LEASE``).
"""

from __future__ import annotations

from channels.client import RedisClient

# Renew if held by me, else take it if nobody holds it: one key, so one cluster slot.
_HOLD = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Lease:
    def __init__(self, redis: RedisClient, key: str, holder: str, ttl: float) -> None:
        self._redis = redis
        self._key = key
        self._holder = holder
        self._ttl_ms = int(ttl * 1000)

    async def hold(self) -> bool:
        """Take or renew the lease; whether this holder has it for ``ttl`` seconds."""
        held = await self._redis.eval(_HOLD, 1, self._key, self._holder, self._ttl_ms)
        return bool(held)

    async def release(self) -> None:
        """Let the next hub have it now (at shutdown), if this holder has it."""
        await self._redis.eval(_RELEASE, 1, self._key, self._holder)
