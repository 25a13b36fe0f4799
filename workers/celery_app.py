"""The Celery app of the SMS fallback, and its tasks.

JSON only (no pickle), late acks with one message prefetched per process, so a
worker that dies mid-task leaves its message to be delivered again (the outbox keeps
that from sending twice). A message is redelivered by the Redis broker after
``HUB_CELERY_VISIBILITY_TIMEOUT`` seconds, which must exceed the longest task
(``TASK_TIME_LIMIT``) and the longest countdown a task schedules: deferrals longer
than half of it are made in steps.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from pymongo.errors import PyMongoError

from channels.emitter import RoomEmitter
from hub.core.settings import Settings
from hub.core.tasks import backoff
from hub.core.tenants import DEFAULT_TENANT, ClinicState, Tenant
from storage import mongo, names
from storage.clinics import clinic_of
from storage.push_outbox import PushOutbox
from storage.sms_outbox import SmsOutbox
from storage.tenants import platform_database, tenant_database
from workers.push import PushSender
from workers.push_services import FcmService, PushService, WebPushService
from workers.sms import Outcome, SmsSender
from workers.twilio_sms import create_driver

log = logging.getLogger("hub.worker")

NOTIFICATION_TASK = "hub.sms.notification"
MESSAGE_TASK = "hub.sms.message"
PUSH_NOTIFICATION_TASK = "hub.push.notification"
PUSH_MESSAGE_TASK = "hub.push.message"
PAGE_TASK = "hub.sms.page"
TASK_SOFT_TIME_LIMIT = 60
TASK_TIME_LIMIT = 90
# The longest wait between two runs of a task while MongoDB is unavailable.
STORE_RETRY_CAP = 60.0


def create_celery(settings: Settings) -> Celery:
    """The app, as both the hub (to enqueue) and the worker (to run) configure it."""
    app = Celery("hub", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=TASK_SOFT_TIME_LIMIT,
        task_time_limit=TASK_TIME_LIMIT,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.redis_timeout,
        broker_transport_options={
            "visibility_timeout": settings.celery_visibility_timeout,
            # How often a worker looks for messages whose worker died; a short
            # visibility timeout is only useful with a matching sweep.
            "unacked_restore_interval": 1 if settings.celery_visibility_timeout < 60 else 10,
            "unacked_restore_throttle": 1 if settings.celery_visibility_timeout < 60 else 10,
            "socket_timeout": settings.redis_timeout,
            "socket_connect_timeout": settings.redis_timeout,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


CLINIC_READ_EVERY = 5.0  # seconds a worker trusts what it read of a clinic


class _Resources:
    """Per worker process, made after the fork: one MongoDB client and emitter, and per
    clinic a sender on its own database, with its own Twilio sender and caps."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pid = 0
        self._client: Any = None
        self._manager: RoomEmitter | None = None
        self._senders: dict[str, tuple[Tenant, SmsSender]] = {}
        self._pushers: dict[str, tuple[Tenant, PushSender]] = {}
        self._clinics: dict[str, tuple[float, Tenant | None]] = {}  # read at, clinic
        own = {t.tenant_id: t for t in settings.tenants}
        # The settings' clinics, for a registry no hub has seeded yet.
        self._seeded = {t: own.get(t, Tenant(t)) for t in settings.tenant_ids}
        self._default = self._seeded[DEFAULT_TENANT]

    def _fresh(self) -> None:
        """Start over in a new process: a client made before the fork is not usable."""
        if self._pid == os.getpid():
            return
        settings = self._settings
        assert settings.mongodb_url is not None
        self._client = mongo.connect_sync(settings.mongodb_url, settings.mongo_timeout)
        assert settings.redis_url is not None
        self._manager = RoomEmitter(settings.redis_url, settings.redis_timeout)
        self._senders, self._pushers = {}, {}
        self._pid = os.getpid()

    def close(self) -> None:
        """Close this process's clients (a worker's live as long as it does)."""
        if self._client is not None:
            self._client.close()
        if self._manager is not None:
            self._manager.close()
        self._pid = 0

    def _db(self, tenant: str) -> Any:
        return tenant_database(self._client, self._settings.mongodb_db, tenant)

    def _clinic(self, tenant: str) -> Tenant:
        """Clinic ``tenant`` as the platform's registry says, read again after
        ``CLINIC_READ_EVERY`` seconds; ValueError unless it is served (a suspended or
        removed clinic's SMS and pushes stop within that time)."""
        if tenant == DEFAULT_TENANT:
            return self._default
        now = time.monotonic()
        read_at, clinic = self._clinics.get(tenant, (None, None))
        if read_at is None or now - read_at > CLINIC_READ_EVERY:
            platform = platform_database(self._client, self._settings.mongodb_db)
            doc = platform[names.CLINICS].find_one({"_id": tenant})
            clinic = self._seeded.get(tenant) if doc is None else clinic_of(doc)
            self._clinics[tenant] = (now, clinic)
        if clinic is None or clinic.state != ClinicState.ACTIVE:
            raise ValueError(f"clinic {tenant} is not served")
        return clinic

    def sender(self, tenant: str) -> SmsSender:
        """Clinic ``tenant``'s SMS sender; ValueError for a clinic that is not served."""
        self._fresh()
        clinic = self._clinic(tenant)
        made = self._senders.get(tenant)
        if made is None or made[0] != clinic:
            settings = self._settings.with_clinic(clinic)
            manager = self._manager
            assert manager is not None

            def emit(event: str, data: dict[str, Any], room: str) -> None:
                manager.emit(event, data, room=room, namespace="/")

            sender = SmsSender(
                settings,
                SmsOutbox(self._db(tenant)),
                create_driver(settings.sms),
                emit,
                tenant=tenant,
            )
            self._senders[tenant] = made = (clinic, sender)
        return made[1]

    def pusher(self, tenant: str) -> PushSender:
        self._fresh()
        clinic = self._clinic(tenant)
        made = self._pushers.get(tenant)
        if made is None or made[0] != clinic:
            settings = self._settings.with_clinic(clinic)
            services: dict[str, PushService] = {}
            if settings.push.webpush:
                services["webpush"] = WebPushService(settings.push, settings.vapid_subject)
            if settings.push.fcm:
                services["fcm"] = FcmService(settings.push)
            db = self._db(tenant)
            pusher = PushSender(settings, PushOutbox(db), SmsOutbox(db), services)
            self._pushers[tenant] = made = (clinic, pusher)
        return made[1]


def register_tasks(app: Celery, settings: Settings) -> None:
    """Define the SMS and push tasks on ``app``; the worker process calls this once."""
    resources = _Resources(settings)
    step = settings.celery_visibility_timeout / 2

    def follow(task: Task, outcome: Outcome, args: list[Any], attempt: int, tenant: str) -> str:
        if outcome.action in ("defer", "retry"):
            task.apply_async(
                args=args,
                kwargs={"attempt": attempt + (outcome.action == "retry"), "tenant": tenant},
                countdown=min(outcome.delay, step),
            )
        return f"{outcome.action}:{outcome.reason}"

    def run(
        task: Task,
        decide: Callable[[str], Callable[..., Outcome]],
        args: list[Any],
        attempt: int,
        outage: int,
        tenant: str,
    ) -> str:
        """Run one decision; while MongoDB fails, run the task again with a capped,
        jittered backoff. A task that raised would be acknowledged all the same
        (late acks ack failures too) and its SMS lost; the outbox row makes a run
        again harmless. Should even the re-enqueue fail, the hub's sweep finds the
        row left open. Every run again carries the task's clinic (``tenant``)."""
        try:
            decider = decide(tenant)
        except ValueError:  # a clinic that is not served (unknown, suspended or removed)
            log.warning("task %s: clinic %r is not served; dropped", task.name, tenant)
            return "failed:clinic not served"
        try:
            outcome = decider(*args, attempt)
        except PyMongoError as exc:
            delay = min(backoff(settings.sms.retry_base, min(outage, 16)), STORE_RETRY_CAP, step)
            log.warning(
                "sms task %s: MongoDB unavailable (%s); again in %.1fs",
                task.name,
                type(exc).__name__,
                delay,
            )
            task.apply_async(
                args=args,
                kwargs={"attempt": attempt, "outage": outage + 1, "tenant": tenant},
                countdown=delay,
            )
            return "retry:store unavailable"
        return follow(task, outcome, args, attempt, tenant)

    def define(name: str, decide: Callable[[str], Callable[..., Outcome]]) -> None:
        """Task ``name``: its cause's ids as arguments, the clinic as ``tenant``
        (``default`` for tasks that hubs of one clinic queued)."""

        @app.task(name=name, bind=True)
        def task(
            self: Task,
            *cause: Any,
            attempt: int = 0,
            outage: int = 0,
            tenant: str = DEFAULT_TENANT,
        ) -> str:
            return run(self, decide, list(cause), attempt, outage, tenant)

    define(NOTIFICATION_TASK, lambda tenant: resources.sender(tenant).notification)
    define(PAGE_TASK, lambda tenant: resources.sender(tenant).page)
    define(MESSAGE_TASK, lambda tenant: resources.sender(tenant).message)
    define(PUSH_NOTIFICATION_TASK, lambda tenant: resources.pusher(tenant).notification)
    define(PUSH_MESSAGE_TASK, lambda tenant: resources.pusher(tenant).message)
