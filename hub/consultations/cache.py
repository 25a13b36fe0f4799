"""The consultations this process keeps for ``assistant:ask``, right across processes.

An ask needs the consultation (to authorize it) and its transcript (for the prompt):
two MongoDB reads, most of the hub's own time before the first token. This process
keeps its last read of each consultation, labelled with the consultation's change
token (``channels/versions.py``), and serves it while the token is unchanged: one
Redis GET instead of the reads. Every write goes through :meth:`changed`, which
replaces the token; a transcript segment written through this process extends the copy
instead of dropping it, when nothing else changed in between, so a transcript that
streams in does not empty the cache.

An ask need not wait for that GET either (:meth:`peek`): it may start from the copy
at once, and confirm it while the model server works, before anything drawn from it is
shown. A copy found stale then is dropped, and the ask reads again. A copy that was
only extended by this process since the ask took it still counts as current: it was
current when the ask came, and a segment stored after the ask is not the ask's.

Bounds: at most ``size`` consultations (the least recently asked about go first), and
no copy is served once it is ``MAX_AGE`` seconds old. The age limit covers the one
case tokens cannot: a write whose token could not be replaced (Redis down at that
moment) leaves other processes' copies wrong for at most that long. So that a
consultation asked about all the time does not read MongoDB on an ask every
``MAX_AGE`` seconds, a copy served when older than ``REFRESH_AGE`` is read again in
the background, one read at a time per consultation. When Redis cannot be reached the
cache steps aside and every read goes to MongoDB.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from channels.versions import ConsultationVersions
from hub.core.errors import HubError, Unavailable
from hub.core.metrics import Metrics
from hub.core.records import Consultation
from hub.core.tasks import TaskGroup

log = logging.getLogger("hub.consultation_cache")

MAX_AGE = 30.0
REFRESH_AGE = MAX_AGE / 2

Segments = list[dict[str, Any]]
Loader = Callable[[], Awaitable[tuple[Consultation, Segments]]]


@dataclass(frozen=True, slots=True)
class _Copy:
    token: str
    consultation: Consultation
    segments: tuple[dict[str, Any], ...]  # by seq; shared, never mutated
    taken_at: float  # before the token was read: the copy is at least this fresh
    # The read from MongoDB this copy comes from; an extended copy keeps its read's.
    # Copies of one read form one line, each made with no write elsewhere in between.
    read: object = field(default_factory=object)


@dataclass(frozen=True, slots=True)
class Reading:
    """A consultation and its transcript, as read for one ask.

    ``confirm`` is None when they are current: read from MongoDB, or checked against
    the change token just now. Otherwise they are this process's copy, not yet checked:
    whoever shows anything drawn from them first awaits ``confirm()``, and reads again
    when it says False (the copy is then dropped, so the next read goes to MongoDB)."""

    consultation: Consultation
    segments: Segments
    confirm: Callable[[], Coroutine[Any, Any, bool]] | None = None


class ConsultationCache:
    def __init__(
        self,
        versions: ConsultationVersions,
        size: int,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._versions = versions
        self._size = size
        self._metrics = metrics
        self._clock = clock
        self._copies: OrderedDict[str, _Copy] = OrderedDict()
        self._refreshes = TaskGroup("consultation refresh")
        self._refreshing: set[str] = set()  # one refresh at a time per consultation

    def __len__(self) -> int:
        return len(self._copies)

    async def read(self, consultation_id: str, load: Loader) -> tuple[Consultation, Segments]:
        """The consultation and its transcript: the kept copy while it is current, else
        ``load()`` (kept for next time). Errors of ``load`` pass through; nothing is kept."""
        if self._size == 0:
            return await load()
        started = self._clock()
        try:
            token = await self._versions.current(consultation_id)
        except Unavailable:
            self._metrics.consultation_cache.labels("bypass").inc()
            return await load()
        copy = self._copies.get(consultation_id)
        if copy is not None and copy.token == token and started - copy.taken_at < MAX_AGE:
            self._copies.move_to_end(consultation_id)
            self._metrics.consultation_cache.labels("hit").inc()
            self._refresh_if_old(consultation_id, copy, load)
            return copy.consultation, list(copy.segments)
        self._metrics.consultation_cache.labels("miss").inc()
        consultation, segments = await load()
        self._keep(consultation_id, _Copy(token, consultation, tuple(segments), started))
        return consultation, segments

    def peek(self, consultation_id: str, load: Loader) -> Reading | None:
        """This process's copy at once, without a round trip, still to be confirmed (see
        ``Reading``); None when there is none young enough to be served. ``load`` is
        what ``read`` would call: a confirmed old copy is read again with it."""
        copy = self._copies.get(consultation_id)
        if copy is None or self._clock() - copy.taken_at >= MAX_AGE:
            return None
        self._copies.move_to_end(consultation_id)
        return Reading(
            copy.consultation,
            list(copy.segments),
            partial(self._confirm, consultation_id, copy, load),
        )

    def kept(self, consultation_id: str) -> Consultation | None:
        """The consultation as this process's copy holds it, however old, unchecked:
        only for what never changes (its id, doctor and patient)."""
        copy = self._copies.get(consultation_id)
        return copy.consultation if copy is not None else None

    async def _confirm(self, consultation_id: str, copy: _Copy, load: Loader) -> bool:
        """Whether ``copy`` was current when it was peeked: it still is, or this process
        has only extended it since (the copy now kept comes from the same read and is
        current). A stale copy is dropped, and so is one that cannot be checked (Redis
        unreachable): the read that follows counts the miss or the bypass, so each ask
        counts once."""
        try:
            token: str | None = await self._versions.current(consultation_id)
        except Unavailable:
            token = None
        kept = self._copies.get(consultation_id)
        current = token is not None and (
            token == copy.token
            or (kept is not None and kept.read is copy.read and kept.token == token)
        )
        if current:
            self._metrics.consultation_cache.labels("hit").inc()
            self._refresh_if_old(consultation_id, kept if kept is not None else copy, load)
        elif self._copies.get(consultation_id) is copy:
            del self._copies[consultation_id]
        return current

    async def changed(self, consultation_id: str, segment: dict[str, Any] | None = None) -> None:
        """Call after every write to the consultation, once MongoDB has it: every
        process's copy stops being served. With ``segment`` (a new transcript segment)
        this process's copy is extended instead, if it was current until this write.
        Never raises: a token that cannot be replaced is logged."""
        try:
            before, token = await self._versions.replace(consultation_id)
        except Unavailable:
            self._copies.pop(consultation_id, None)
            log.warning(
                "consultation=%s changed but its version could not be replaced; "
                "other hub processes may serve their copy for up to %.0f s",
                consultation_id,
                MAX_AGE,
            )
            return
        copy = self._copies.pop(consultation_id, None)
        if segment is None or copy is None or copy.token != before:
            return
        segments = list(copy.segments)
        at = bisect.bisect_left(segments, segment["seq"], key=_seq)
        if at == len(segments) or segments[at]["seq"] != segment["seq"]:  # not already in
            segments.insert(at, segment)
        self._keep(
            consultation_id,
            _Copy(token, copy.consultation, tuple(segments), copy.taken_at, copy.read),
        )

    async def close(self) -> None:
        """Cancel the refreshes under way."""
        await self._refreshes.close(timeout=0)

    def _refresh_if_old(self, consultation_id: str, copy: _Copy, load: Loader) -> None:
        if self._clock() - copy.taken_at < REFRESH_AGE or consultation_id in self._refreshing:
            return
        self._refreshing.add(consultation_id)
        task = self._refreshes.spawn(self._refresh(consultation_id, copy, load))
        task.add_done_callback(lambda _: self._refreshing.discard(consultation_id))

    async def _refresh(self, consultation_id: str, copy: _Copy, load: Loader) -> None:
        """Read the consultation again, as ``read`` does on a miss. The new copy replaces
        ``copy`` only if nothing replaced it meanwhile (a segment extended it, a read
        kept a newer one); a failure is logged and leaves ``copy`` to age out."""
        started = self._clock()
        try:
            token = await self._versions.current(consultation_id)
            consultation, segments = await load()
        except HubError as exc:
            log.info(
                "consultation=%s could not be read again (%s); its copy ages out",
                consultation_id,
                exc.code,
            )
            return
        self._metrics.consultation_cache.labels("refresh").inc()
        if self._copies.get(consultation_id, copy) is copy:
            self._keep(consultation_id, _Copy(token, consultation, tuple(segments), started))

    def _keep(self, consultation_id: str, copy: _Copy) -> None:
        self._copies[consultation_id] = copy
        self._copies.move_to_end(consultation_id)
        while len(self._copies) > self._size:
            self._copies.popitem(last=False)


def _seq(segment: dict[str, Any]) -> int:
    return int(segment["seq"])
