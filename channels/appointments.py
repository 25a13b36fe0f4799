"""Appointment events in: the durable stream, the best-effort pub/sub channel, a publisher.

Durable path: the stream ``hub:appointments`` read by the consumer group ``hub``. An
entry is acknowledged (XACK) only after its effect is stored and emitted, or after it
went to the dead-letter stream. Entries another consumer left pending (a hub that died
between reading and acknowledging) are claimed after ``claim_after`` seconds with
XAUTOCLAIM. The group starts at the beginning of the stream, so events published while
no hub ran are delivered when one starts.

Best-effort path: the pub/sub channel ``hub:appointments`` with the same payload; what
is published while no hub listens is lost (publishers that need delivery use XADD).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from redis.exceptions import ResponseError

from channels.client import RedisClient, RedisFailure, Subscriber
from channels.names import (
    APPOINTMENTS_GROUP,
    appointments_channel,
    appointments_dead,
    appointments_stream,
)
from hub.core.appointment_event import InvalidEvent, parse_event
from hub.core.errors import HubError
from hub.core.tasks import Backoff, raise_if_cancelled
from hub.core.tenants import DEFAULT_TENANT

log = logging.getLogger("hub.appointments")

STREAM_MAXLEN = 100_000
EVENT_FIELD = "event"
Handle = Callable[[Any], Awaitable[Any]]


async def publish_event(
    redis: RedisClient, event: dict[str, Any], *, tenant: str = DEFAULT_TENANT
) -> str:
    """Append an appointment event to clinic ``tenant``'s durable stream; returns the
    entry id.

    For back-ends written in Python. From a shell, the same is::

        redis-cli XADD hub:appointments MAXLEN '~' 100000 '*' event '{"event_id": ...}'
    """
    entry_id = await redis.xadd(
        appointments_stream(tenant),
        {EVENT_FIELD: orjson.dumps(event)},
        maxlen=STREAM_MAXLEN,
        approximate=True,
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def dead_letter(
    redis: RedisClient,
    raw: Any,
    reason: str,
    source: str,
    entry_id: str = "",
    *,
    tenant: str = DEFAULT_TENANT,
) -> None:
    """Keep an event that can never apply, with why, for an operator to look at. With
    the stream's ``entry_id``, the entry is acknowledged in the same transaction: it is
    either still pending or dead-lettered, never dead-lettered twice (the dead letters
    share their stream's hash slot, so this holds on a cluster too)."""
    fields: dict[Any, Any] = {
        "reason": reason,
        "source": source,
        "entry_id": entry_id,
        EVENT_FIELD: raw if isinstance(raw, str | bytes) else orjson.dumps(raw),
    }
    async with redis.pipeline(transaction=bool(entry_id)) as pipe:
        pipe.xadd(appointments_dead(tenant), fields, maxlen=STREAM_MAXLEN, approximate=True)
        if entry_id:
            pipe.xack(appointments_stream(tenant), APPOINTMENTS_GROUP, entry_id)
        await pipe.execute()


LAG_COUNT_MAX = 10_000  # a backlog past this is reported as this (Redis < 7 only)


class StreamConsumer:
    """Reads the appointments stream as one consumer of the group; see the module docstring."""

    def __init__(
        self,
        redis: RedisClient,
        consumer: str,
        handle: Handle,
        *,
        claim_after: float,
        block: float = 1.0,
        batch: int = 100,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        self._redis = redis
        self._tenant = tenant
        self._stream = appointments_stream(tenant)
        self._consumer = consumer
        self._handle = handle
        self._claim_after_ms = int(claim_after * 1000)
        self._claim_every = max(claim_after / 2, 0.05)
        self._block_ms = int(block * 1000)
        self._batch = batch
        self.last_ok = 0.0  # monotonic time of the last successful read
        self.processed = 0

    def alive(self, now: float | None = None) -> bool:
        """True if the consumer read the stream recently (for /health/ready)."""
        now = time.monotonic() if now is None else now
        return now - self.last_ok < self._block_ms / 1000 + 10.0

    async def backlog(self) -> tuple[int, int]:
        """The group's lag (entries not yet delivered to any consumer) and pending count
        (delivered, not yet acknowledged). Redis 7 reports the lag; before it, the
        entries after the group's last delivered id are counted, up to LAG_COUNT_MAX."""
        for group in await self._redis.xinfo_groups(self._stream):
            info: dict[str, Any] = {_text(k): v for k, v in group.items()}
            if _text(info.get("name", "")) != APPOINTMENTS_GROUP:
                continue
            pending = int(info.get("pending") or 0)
            lag = info.get("lag")
            if lag is None:
                after = "(" + _text(info["last-delivered-id"])
                entries = await self._redis.xrange(self._stream, min=after, count=LAG_COUNT_MAX)
                lag = len(entries or [])
            return int(lag), pending
        return 0, 0

    async def run(self) -> None:
        """Consume until cancelled; Redis errors reconnect with capped backoff."""
        backoff = Backoff()
        next_claim = 0.0
        while True:
            try:
                await self._ensure_group()
                self.last_ok = time.monotonic()
                while True:
                    raise_if_cancelled()
                    if time.monotonic() >= next_claim:
                        await self._claim()
                        next_claim = time.monotonic() + self._claim_every
                    replies = await self._redis.xreadgroup(
                        APPOINTMENTS_GROUP,
                        self._consumer,
                        {self._stream: ">"},
                        count=self._batch,
                        block=self._block_ms,
                    )
                    self.last_ok = time.monotonic()
                    backoff.reset()
                    for _, entries in cast(list[Any], replies or []):
                        await self._process_batch(entries)
            except asyncio.CancelledError:
                raise
            except (*RedisFailure, OSError) as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" not in str(exc):
                    log.error("appointments stream: %s", exc)
                else:
                    log.warning("appointments stream: %s; reconnecting", type(exc).__name__)
                await backoff.wait()

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._stream, APPOINTMENTS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _claim(self) -> None:
        """Take over entries idle for longer than ``claim_after`` (their reader died)."""
        cursor = "0-0"
        while True:
            reply = await self._redis.xautoclaim(
                self._stream,
                APPOINTMENTS_GROUP,
                self._consumer,
                self._claim_after_ms,
                cursor,
                count=self._batch,
            )
            cursor, entries = reply[0], reply[1]
            live = []
            for entry_id, fields in entries:
                if fields is not None:  # None: trimmed away meanwhile
                    log.info("appointments stream: claimed entry %s", entry_id)
                    live.append((entry_id, fields))
                else:
                    await self._redis.xack(self._stream, APPOINTMENTS_GROUP, entry_id)
            await self._process_batch(live)
            if cursor in ("0-0", b"0-0"):
                return

    async def _process_batch(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Handle a batch: different appointments concurrently, one appointment in order."""
        by_appointment: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for entry_id, fields in entries:
            by_appointment.setdefault(_appointment_of(fields) or entry_id, []).append(
                (entry_id, fields)
            )

        async def in_order(items: list[tuple[str, dict[str, Any]]]) -> None:
            for entry_id, fields in items:
                await self._process(entry_id, fields)

        results = await asyncio.gather(
            *(in_order(items) for items in by_appointment.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _process(self, entry_id: str, fields: dict[str, Any]) -> None:
        raw = fields.get(EVENT_FIELD)
        refused: str | None = None  # why the entry goes to the dead letters
        try:
            if raw is None:
                raise InvalidEvent(f"entry has no '{EVENT_FIELD}' field")
            await self._handle(parse_event(raw))
        except InvalidEvent as exc:
            log.warning("appointments stream: entry %s refused: %s", entry_id, exc.message)
            refused = exc.message
        except HubError as exc:
            if exc.code == "unavailable":
                # Left pending: this or another hub claims it again after claim_after.
                log.warning(
                    "appointments stream: entry %s postponed: storage unavailable", entry_id
                )
                return
            log.error("appointments stream: entry %s failed: %s", entry_id, exc.code)
            refused = f"failed: {exc.code}"
        except RedisFailure:
            raise
        except Exception as exc:  # a bug must not crash-loop the consumer on one entry
            log.exception("appointments stream: entry %s failed: %s", entry_id, type(exc).__name__)
            refused = f"internal error: {type(exc).__name__}"
        if refused is None:
            await self._redis.xack(self._stream, APPOINTMENTS_GROUP, entry_id)
        else:
            await dead_letter(
                self._redis, raw or "", refused, "stream", entry_id, tenant=self._tenant
            )
        self.processed += 1


def _appointment_of(fields: dict[str, Any]) -> str | None:
    try:
        value = orjson.loads(fields.get(EVENT_FIELD) or b"").get("appointment_id")
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return None
    return value if isinstance(value, str) else None


class ChannelListener(Subscriber):
    """Listens on every served clinic's pub/sub channel, on one subscription whatever
    the number of clinics: an event goes to its clinic's handler (``add``), an invalid
    one to its clinic's dead letters. Not sharded on a cluster: back-ends ``PUBLISH``,
    which reaches every node. A clinic added or removed takes effect within ``poll``
    seconds."""

    name = "appointments channel"
    sharded = False

    def __init__(self, redis: RedisClient, *, poll: float = 1.0) -> None:
        super().__init__(redis, poll)
        self._clinics: dict[str, tuple[str, Handle]] = {}  # channel -> (tenant, handle)

    def add(self, tenant: str, handle: Handle) -> None:
        self._clinics[appointments_channel(tenant)] = (tenant, handle)

    def remove(self, tenant: str) -> None:
        self._clinics.pop(appointments_channel(tenant), None)

    def channels(self) -> set[str]:
        return set(self._clinics)

    async def _process(self, channel: str, raw: Any) -> None:
        clinic = self._clinics.get(channel)
        if clinic is None:
            return  # a clinic stopped since: its events wait in its stream, or are lost
        tenant, handle = clinic
        try:
            await handle(parse_event(raw))
        except InvalidEvent as exc:
            log.warning("appointments channel: event refused: %s", exc.message)
            await dead_letter(self._redis, raw, exc.message, "pubsub", tenant=tenant)
        except HubError as exc:
            # Not lost: moved to the durable stream, which retries until storage is back.
            log.warning("appointments channel: %s; event moved to the stream", exc.code)
            await self._redis.xadd(
                appointments_stream(tenant),
                {EVENT_FIELD: raw},
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
        except RedisFailure:
            raise
        except Exception as exc:
            log.exception("appointments channel: event failed: %s", type(exc).__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
