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
from redis.asyncio.cluster import RedisCluster
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
BACKLOG_TTL = 10.0  # seconds a backlog is reported before it is read again
HandleOf = Callable[[str], Handle | None]  # a clinic's handler; None: not served


class StreamConsumer:
    """Reads every added clinic's appointment stream as one consumer of each stream's
    group (see the module docstring), on one connection whatever the number of clinics.

    On a single node, one blocking ``XREADGROUP`` names every stream. A cluster refuses
    keys of several slots in one command, so there each stream gets a non-blocking
    ``XREADGROUP`` in one pipeline (redis-py sends one batch per master), every
    ``block`` seconds. An entry goes to its clinic's handler (``handle_of``); one of a
    clinic no longer served stays pending, for whichever hub serves it."""

    def __init__(
        self,
        redis: RedisClient,
        consumer: str,
        handle_of: HandleOf,
        *,
        claim_after: float,
        block: float = 1.0,
        batch: int = 100,
    ) -> None:
        self._redis = redis
        self._cluster = isinstance(redis, RedisCluster)
        self._consumer = consumer
        self._handle_of = handle_of
        self._streams: dict[str, str] = {}  # stream -> tenant
        self._grouped: set[str] = set()  # streams whose group this consumer made sure of
        self._added = asyncio.Event()
        self._claim_after_ms = int(claim_after * 1000)
        self._claim_every = max(claim_after / 2, 0.05)
        self._block_ms = int(block * 1000)
        self._batch = batch
        self._backlog: tuple[float, tuple[int, int]] | None = None  # (read at, backlog)
        self.last_ok = 0.0  # monotonic time of the last successful read
        self.processed = 0

    def add(self, tenant: str) -> None:
        """Read clinic ``tenant``'s stream too, from the next read on."""
        self._streams[appointments_stream(tenant)] = tenant
        self._added.set()

    def remove(self, tenant: str) -> None:
        stream = appointments_stream(tenant)
        self._streams.pop(stream, None)
        self._grouped.discard(stream)

    def alive(self, now: float | None = None) -> bool:
        """True if the consumer read the streams recently (for /health/ready)."""
        now = time.monotonic() if now is None else now
        return now - self.last_ok < self._block_ms / 1000 + 10.0

    async def backlog(self) -> tuple[int, int]:
        """Every stream's lag (entries not yet delivered to any consumer) and pending
        count (delivered, not yet acknowledged), summed; read at most every
        ``BACKLOG_TTL`` seconds. Redis 7 reports the lag; before it, the entries after
        the group's last delivered id are counted, up to LAG_COUNT_MAX."""
        now = time.monotonic()
        if self._backlog is not None and now - self._backlog[0] < BACKLOG_TTL:
            return self._backlog[1]
        streams = list(self._streams)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xinfo_groups(stream)
            replies = await pipe.execute(raise_on_error=False)
        lag_total = pending_total = 0
        for stream, groups in zip(streams, replies, strict=True):
            if isinstance(groups, Exception):  # no stream yet (a clinic just added)
                continue
            for group in groups:
                info: dict[str, Any] = {_text(k): v for k, v in group.items()}
                if _text(info.get("name", "")) != APPOINTMENTS_GROUP:
                    continue
                pending_total += int(info.get("pending") or 0)
                lag = info.get("lag")
                if lag is None:
                    after = "(" + _text(info["last-delivered-id"])
                    entries = await self._redis.xrange(stream, min=after, count=LAG_COUNT_MAX)
                    lag = len(entries or [])
                lag_total += int(lag)
        self._backlog = (now, (lag_total, pending_total))
        return lag_total, pending_total

    async def run(self) -> None:
        """Consume until cancelled; Redis errors reconnect with capped backoff."""
        backoff = Backoff()
        next_claim = 0.0
        while True:
            try:
                self.last_ok = time.monotonic()
                while True:
                    raise_if_cancelled()
                    await self._ensure_groups()
                    if time.monotonic() >= next_claim:
                        await self._claim()
                        next_claim = time.monotonic() + self._claim_every
                    replies = await self._read()
                    self.last_ok = time.monotonic()
                    backoff.reset()
                    for stream, entries in replies:
                        await self._process_batch(_text(stream), entries)
            except asyncio.CancelledError:
                raise
            except (*RedisFailure, OSError) as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    self._grouped.clear()  # a stream was deleted: make the groups again
                    log.warning("appointments stream: a group is gone; making it again")
                elif isinstance(exc, ResponseError):
                    log.error("appointments stream: %s", exc)
                else:
                    log.warning("appointments stream: %s; reconnecting", type(exc).__name__)
                await backoff.wait()

    async def _read(self) -> list[tuple[Any, list[tuple[str, dict[str, Any]]]]]:
        streams = {stream: ">" for stream in self._streams}
        if not streams:  # no clinic yet: wait for one, alive all the same
            self._added.clear()
            try:
                await asyncio.wait_for(self._added.wait(), self._block_ms / 1000)
            except TimeoutError:
                pass
            return []
        if not self._cluster:
            read = await self._redis.xreadgroup(
                APPOINTMENTS_GROUP,
                self._consumer,
                streams,  # type: ignore[arg-type]  # redis-py's stub wants one key type
                count=self._batch,
                block=self._block_ms,
            )
            return cast(list[Any], read or [])
        cluster = cast(RedisCluster, self._redis)
        async with cluster.pipeline(transaction=False) as pipe:
            for stream in streams:
                # XREADGROUP's keys are "movable": left to find them, redis-py asks a
                # node (COMMAND GETKEYS) for every one, one round trip each. The
                # stream's node is named here instead (a moved slot is followed as
                # for any command).
                pipe.execute_command(
                    "XREADGROUP", "GROUP", APPOINTMENTS_GROUP, self._consumer,
                    "COUNT", self._batch, "STREAMS", stream, ">",
                    target_nodes=cluster.get_node_from_key(stream),
                )  # fmt: skip
            results = await pipe.execute()
        replies: list[Any] = [reply for result in results for reply in result or []]
        if not replies:
            await asyncio.sleep(self._block_ms / 1000)  # the poll a blocking read would be
        return replies

    async def _ensure_groups(self) -> None:
        new = [stream for stream in self._streams if stream not in self._grouped]
        if not new:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in new:
                pipe.xgroup_create(stream, APPOINTMENTS_GROUP, id="0", mkstream=True)
            results = await pipe.execute(raise_on_error=False)
        for stream, result in zip(new, results, strict=True):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
            self._grouped.add(stream)

    async def _claim(self) -> None:
        """Take over entries idle for longer than ``claim_after`` (their reader died):
        one ``XAUTOCLAIM`` per stream, in one pipeline."""
        cursors = {stream: "0-0" for stream in self._streams}
        while cursors:
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream, cursor in cursors.items():
                    pipe.xautoclaim(
                        stream,
                        APPOINTMENTS_GROUP,
                        self._consumer,
                        self._claim_after_ms,
                        cursor,
                        count=self._batch,
                    )
                replies = await pipe.execute()
            more: dict[str, str] = {}
            for stream, reply in zip(list(cursors), replies, strict=True):
                cursor, entries = reply[0], reply[1]
                live = []
                for entry_id, fields in entries:
                    if fields is not None:  # None: trimmed away meanwhile
                        log.info("appointments stream: claimed entry %s", entry_id)
                        live.append((entry_id, fields))
                    else:
                        await self._redis.xack(stream, APPOINTMENTS_GROUP, entry_id)
                await self._process_batch(stream, live)
                if cursor not in ("0-0", b"0-0"):
                    more[stream] = _text(cursor)
            cursors = more

    async def _process_batch(self, stream: str, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Handle a batch of one stream: different appointments concurrently, one
        appointment in order."""
        if not entries:
            return  # the clinic's services are not asked for: that would build them
        tenant = self._streams.get(stream)
        handle = None if tenant is None else self._handle_of(tenant)
        if tenant is None or handle is None:
            return  # left pending: claimed by a hub that serves the clinic
        by_appointment: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for entry_id, fields in entries:
            by_appointment.setdefault(_appointment_of(fields) or entry_id, []).append(
                (entry_id, fields)
            )

        async def in_order(items: list[tuple[str, dict[str, Any]]]) -> None:
            for entry_id, fields in items:
                await self._process(tenant, stream, handle, entry_id, fields)

        results = await asyncio.gather(
            *(in_order(items) for items in by_appointment.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _process(
        self, tenant: str, stream: str, handle: Handle, entry_id: str, fields: dict[str, Any]
    ) -> None:
        raw = fields.get(EVENT_FIELD)
        refused: str | None = None  # why the entry goes to the dead letters
        try:
            if raw is None:
                raise InvalidEvent(f"entry has no '{EVENT_FIELD}' field")
            await handle(parse_event(raw))
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
            await self._redis.xack(stream, APPOINTMENTS_GROUP, entry_id)
        else:
            await dead_letter(self._redis, raw or "", refused, "stream", entry_id, tenant=tenant)
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

    def __init__(self, redis: RedisClient, handle_of: HandleOf, *, poll: float = 1.0) -> None:
        super().__init__(redis, poll)
        self._handle_of = handle_of
        self._clinics: dict[str, str] = {}  # channel -> tenant

    def add(self, tenant: str) -> None:
        self._clinics[appointments_channel(tenant)] = tenant

    def remove(self, tenant: str) -> None:
        self._clinics.pop(appointments_channel(tenant), None)

    def channels(self) -> set[str]:
        return set(self._clinics)

    async def _process(self, channel: str, raw: Any) -> None:
        tenant = self._clinics.get(channel)
        handle = None if tenant is None else self._handle_of(tenant)
        if tenant is None or handle is None:
            return  # a clinic stopped since: its events wait in its stream, or are lost
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
