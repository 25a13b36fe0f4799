"""The retention policy: what is kept how long, and the periodic run that deletes the rest.

Days per kind come from the clinic's back-end (``PUT /api/v1/clinic/retention``)
where it set them, else from ``HUB_RETENTION_*``; None keeps for ever (the default).
A run deletes, kind after kind, in batches of ``HUB_RETENTION_BATCH`` with a pause
between them, so a large backlog never holds MongoDB for long; what is under a legal
hold is skipped. Every hub checks periodically, and one at a time runs (a lease in
``jobs``). Each run writes one audit record: per kind, the period, the cut-off, how
many documents were deleted or emptied (a message's replaced versions included), and
the oldest date kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from hub.core import clock
from hub.core.metrics import Metrics
from hub.core.settings import RECORD_KINDS, RecordSettings
from storage import names
from storage.audit import AuditLog
from storage.retention import Held, RetentionStore, Window

log = logging.getLogger(__name__)

RETENTION_ACTOR = "system:retention"
# Where the oldest date kept of each kind is read.
OLDEST_IN = {
    "messages": names.MESSAGES,
    "attachments": names.ATTACHMENTS,
    "transcripts": names.TRANSCRIPT,
    "assistant": names.ASSISTANT_OUTPUTS,
    "notifications": names.NOTIFICATIONS,
}
# One batch: (documents taken, which pages the run; documents deleted or emptied,
# which the audit record counts: a message's replaced versions go with it).
Batch = Callable[[Window, Held, int], Awaitable[tuple[int, int]]]
WINDOW = timedelta(days=1)  # the dates one batch query spans at most


class Retention:
    def __init__(
        self,
        settings: RecordSettings,
        store: RetentionStore,
        audit: AuditLog,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self.settings = settings
        self.store = store
        self._audit = audit

    async def policy(self) -> dict[str, int | None]:
        """Days kept per kind, None for ever: the back-end's where set, else the settings'."""
        stored = await self.store.policy()
        return {
            kind: stored[kind] if kind in stored else self.settings.retention_days.get(kind)
            for kind in RECORD_KINDS
        }

    async def run_if_due(self) -> dict[str, Any] | None:
        """One run, if no hub ran one within ``HUB_RETENTION_EVERY``; its audit record."""
        policy = await self.policy()
        if all(days is None for days in policy.values()):
            return None
        if not await self.store.claim_run(self.settings.retention_every):
            return None
        return await self.run(policy)

    async def run(self, policy: dict[str, int | None] | None = None) -> dict[str, Any]:
        """Delete what is past its period, outside holds; returns the run's audit record."""
        policy = policy or await self.policy()
        held = await self.store.held()
        now = clock.now()
        kinds: dict[str, Any] = {}
        for kind in RECORD_KINDS:
            days = policy[kind]
            if days is None:
                kinds[kind] = {"days": None}
                continue
            cutoff = now - timedelta(days=days)
            deleted = 0
            for collection, batch in self._batches(kind):
                deleted += await self._drain(collection, batch, cutoff, held)
            if kind == "transcripts":
                await self.store.clear_summaries(cutoff, held)
            self._metrics.retention_deleted.labels(kind).inc(deleted)
            oldest = await self.store.oldest(OLDEST_IN[kind])
            kinds[kind] = {
                "days": days,
                "cutoff": cutoff,
                "deleted": deleted,
                "oldest_kept": oldest,
            }
        record = {"kinds": kinds, "holds": held.holds}
        await self._audit.record(RETENTION_ACTOR, "retention.run", **record)
        log.info(
            "retention: deleted %s; %d holds",
            ", ".join(f"{k}={v.get('deleted', 0)}" for k, v in kinds.items() if v["days"]),
            held.holds,
        )
        return record

    def _batches(self, kind: str) -> list[tuple[str, Batch]]:
        """The collections a kind covers, each with its batch deleter."""
        store = self.store

        def in_(collection: str, expire: Callable[..., Awaitable[int]]) -> tuple[str, Batch]:
            async def batch(within: Window, held: Held, size: int) -> tuple[int, int]:
                taken = await expire(collection, within, held, size)
                return taken, taken

            return collection, batch

        def alone(collection: str, expire: Callable[..., Awaitable[int]]) -> tuple[str, Batch]:
            async def batch(within: Window, held: Held, size: int) -> tuple[int, int]:
                taken = await expire(within, held, size)
                return taken, taken

            return collection, batch

        def messages(collection: str) -> tuple[str, Batch]:
            async def batch(within: Window, held: Held, size: int) -> tuple[int, int]:
                return await store.expire_messages(collection, within, held, size)

            return collection, batch

        batches: dict[str, list[tuple[str, Batch]]] = {
            "messages": [messages(names.MESSAGES), messages(names.STAFF_NOTES)],
            "attachments": [alone(names.ATTACHMENTS, store.expire_attachments)],
            "transcripts": [alone(names.TRANSCRIPT, store.expire_transcripts)],
            "assistant": [alone(names.ASSISTANT_OUTPUTS, store.expire_assistant)],
            "notifications": [
                in_(names.NOTIFICATIONS, store.expire_notifications),
                in_(names.SMS_OUTBOX, store.expire_notifications),
                in_(names.PUSH_OUTBOX, store.expire_notifications),
                in_(names.WEBHOOK_OUTBOX, store.expire_notifications),
            ],
        }
        return batches[kind]

    async def _drain(self, collection: str, batch: Batch, cutoff: datetime, held: Held) -> int:
        """Everything of ``collection`` before ``cutoff`` (outside holds), a day of dates at a
        time from the oldest, a batch at a time within each day."""
        since = await self.store.oldest(collection, before=cutoff)
        if since is None:
            return 0
        size, deleted = self.settings.retention_batch, 0
        loop = asyncio.get_running_loop()
        while since < cutoff:
            before = min(since + WINDOW, cutoff)
            while True:
                started = loop.time()
                taken, documents = await batch({"$gte": since, "$lt": before}, held, size)
                deleted += documents
                if taken:
                    # Live traffic goes first: after each batch, a pause at least as
                    # long as the batch took, so that a slow store is never busy with
                    # retention more than half the time.
                    await asyncio.sleep(max(self.settings.retention_pause, loop.time() - started))
                if taken < size:
                    break
            since = before
        return deleted
