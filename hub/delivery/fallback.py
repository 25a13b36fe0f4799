"""The hub's side of the fallback for people with no connected device: a push
notification at once where they registered a device for it, an SMS after that (or
alone, as before push existed). Celery tasks, scheduled without blocking the loop.

The chain, per recipient:

* a connected device: the event reaches it; an SMS only if a notification stays
  unacked for ``HUB_SMS_FALLBACK_AFTER``;
* no connected device but a push device: a push at once, and an SMS after
  ``HUB_SMS_AFTER_PUSH`` if the notification is still unacked or the message unread;
* neither: the SMS as before (at once for a notification, after
  ``HUB_SMS_FALLBACK_AFTER`` for a message).

Publishing to the broker is a synchronous kombu call, so it runs on a small thread
pool, bounded by a timeout. Scheduling is fire-and-forget for the caller: a chat ack
or a stream XACK never waits for the broker, and a broker that is down costs an SMS
fallback (logged), never a message or an event.

The sweep runs the task again for an outbox row that no task came back to (a worker
whose re-enqueue failed with MongoDB and Redis both down, a broker that lost its
queue): every hub looks, each row goes to one of them per ``HUB_SMS_SWEEP_AFTER``,
and the outbox keeps a row swept twice from sending twice.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from celery import Celery

from channels.presence import Presence
from hub.core.metrics import Metrics
from hub.core.settings import Settings
from hub.core.tasks import TaskGroup
from hub.core.tenants import DEFAULT_TENANT
from storage.push import PushDevices
from storage.sms import SmsStore
from workers.celery_app import (
    MESSAGE_TASK,
    NOTIFICATION_TASK,
    PAGE_TASK,
    PUSH_MESSAGE_TASK,
    PUSH_NOTIFICATION_TASK,
)

log = logging.getLogger("hub.fallback")


class FallbackScheduler:
    def __init__(
        self,
        settings: Settings,
        celery: Celery,
        presence: Presence,
        metrics: Metrics | None = None,
        push_devices: PushDevices | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._tenant = tenant  # every task names its clinic: the worker opens its database
        self._celery = celery
        self._presence = presence
        # Devices matter only where a sender is configured.
        self._push_devices = push_devices if settings.push.webpush or settings.push.fcm else None
        self._after_push = settings.push.sms_after_push
        self._delay = settings.sms.fallback_after
        self.sweep_after = settings.sms.sweep_after
        self._timeout = settings.redis_timeout
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sms-publish")
        self._tasks = TaskGroup("sms scheduling")
        self.published = 0
        self.failed = 0

    def notifications_created(self, notifications: list[dict[str, Any]]) -> None:
        """Schedule the fallback of each new notification: at once for a recipient with
        no connected device, after ``HUB_SMS_FALLBACK_AFTER`` for one who may ack it."""
        if notifications:
            self._tasks.spawn(self._notifications(notifications))

    def message_stored(
        self, conversation_id: str, member_ids: tuple[str, ...], sender_id: str, seq: int
    ) -> None:
        """Schedule a "new message" check for each member offline now; it runs after
        ``HUB_SMS_FALLBACK_AFTER`` and sends only if the message is still unread."""
        others = [member for member in member_ids if member != sender_id]
        if others:
            self._tasks.spawn(self._message(conversation_id, others, seq))

    async def _notifications(self, notifications: list[dict[str, Any]]) -> None:
        online = await self._online([n["user_id"] for n in notifications])
        offline = [n["user_id"] for n in notifications if not online.get(n["user_id"])]
        pushable = await self._pushable(offline)
        for notification in notifications:
            user_id = notification["user_id"]
            if online.get(user_id):
                delay = self._delay
            elif user_id in pushable:
                await self._publish(PUSH_NOTIFICATION_TASK, [notification["_id"]], 0.0)
                delay = self._after_push
            else:
                delay = 0.0
            await self._publish(NOTIFICATION_TASK, [notification["_id"]], delay)

    async def _message(self, conversation_id: str, member_ids: list[str], seq: int) -> None:
        online = await self._online(member_ids)
        offline = [member for member in member_ids if not online.get(member)]
        pushable = await self._pushable(offline)
        for member in offline:
            delay = self._delay
            if member in pushable:
                await self._publish(PUSH_MESSAGE_TASK, [conversation_id, member, seq], 0.0)
                delay = self._after_push
            await self._publish(MESSAGE_TASK, [conversation_id, member, seq], delay)

    def page(self, conversation_id: str, seq: int, user_id: str) -> None:
        """Page ``user_id`` by SMS at once about an urgent message: through quiet hours
        and past the daily cap, once per message and person."""
        self._tasks.spawn(self._publish(PAGE_TASK, [conversation_id, seq, user_id], 0.0))

    async def _pushable(self, user_ids: list[str]) -> set[str]:
        """The users with a push device (none when push is not configured)."""
        if self._push_devices is None or not user_ids:
            return set()
        try:
            return await self._push_devices.with_devices(user_ids)
        except Exception as exc:  # unknown: the SMS path as without push
            log.warning("push scheduling: devices unavailable (%s)", type(exc).__name__)
            return set()

    async def _online(self, user_ids: list[str]) -> dict[str, bool]:
        try:
            return await self._presence.online(user_ids)
        except Exception as exc:  # presence unknown: treat as online, the delay still runs
            log.warning("sms scheduling: presence unavailable (%s)", type(exc).__name__)
            return dict.fromkeys(user_ids, True)

    async def sweep(self, store: SmsStore) -> int:
        """Enqueue the task of every outbox row left open past ``sweep_after``; the
        number of rows found. Raises ``Unavailable`` if MongoDB does not answer."""
        rows = await store.claim_stuck(self.sweep_after)
        for row in rows:
            task = {"message": MESSAGE_TASK, "page": PAGE_TASK}.get(
                str(row.get("kind")), NOTIFICATION_TASK
            )
            log.warning(
                "sms %s left %s past %.0fs: its task runs again",
                row["_id"],
                row.get("state"),
                self.sweep_after,
            )
            await self._publish(task, list(row["args"]), 0.0)
        return len(rows)

    async def _publish(self, task: str, args: list[Any], countdown: float) -> None:
        loop = asyncio.get_running_loop()
        call = partial(
            self._celery.send_task,
            task,
            args=args,
            kwargs={"tenant": self._tenant},
            countdown=countdown,
        )
        try:
            await asyncio.wait_for(loop.run_in_executor(self._executor, call), self._timeout)
        except Exception as exc:
            self.failed += 1
            self._metrics.sms_scheduled.labels("failed").inc()
            log.error("sms scheduling: %s not enqueued: %s", task, type(exc).__name__)
            return
        self.published += 1
        self._metrics.sms_scheduled.labels("enqueued").inc()

    async def close(self, timeout: float) -> None:
        await self._tasks.close(timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)
