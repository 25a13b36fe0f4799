"""Change tokens: which version of a consultation a process may have cached.

Every write to a consultation (or its transcript) is followed by replacing its token
in Redis with a fresh random one. A process that read the consultation after seeing
token T may serve that copy for as long as the token is still T: any write it did not
see finished its MongoDB write after the read, and so replaced T afterwards. Tokens
are random rather than counted, so a key that expired or was evicted and created again
can never match a copy taken before (a counter would start again at 1).
"""

from __future__ import annotations

import uuid

from channels.client import RedisClient, redis_errors
from channels.names import consultation_version_key
from hub.core.errors import Unavailable
from hub.core.tenants import DEFAULT_TENANT

# Long enough to outlast any consultation; a key that expires only costs one re-read.
TOKEN_TTL = 24 * 3600


class ConsultationVersions:
    def __init__(self, redis: RedisClient, tenant: str = DEFAULT_TENANT) -> None:
        self._tenant = tenant
        self._redis = redis

    async def current(self, consultation_id: str) -> str:
        """The consultation's token, created if it has none (expired, or never written)."""
        key = consultation_version_key(self._tenant, consultation_id)
        with redis_errors():
            token = await self._redis.get(key)
            if token is None:
                fresh = uuid.uuid4().hex
                # Another process may create one at the same moment: keep theirs.
                if await self._redis.set(key, fresh, nx=True, ex=TOKEN_TTL):
                    return fresh
                token = await self._redis.get(key)
        if token is None:  # created and gone within two round trips: treat as changed
            raise Unavailable("the consultation's version is unknown")
        return str(token)

    async def replace(self, consultation_id: str) -> tuple[str | None, str]:
        """Mark a write: the token before (None if there was none) and the new one."""
        fresh = uuid.uuid4().hex
        with redis_errors():
            before = await self._redis.set(
                consultation_version_key(self._tenant, consultation_id),
                fresh,
                ex=TOKEN_TTL,
                get=True,
            )
        return (str(before) if before is not None else None), fresh
