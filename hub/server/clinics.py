"""The clinics this hub serves, as the platform's registry says while the hub runs.

Every active clinic of the registry (``storage.clinics``), and ``default`` (the hub's
own, configured by its settings), has its services (``hub.server.tenancy``) and its
background work here: the message writers, the SMS outbox sweep, the attachment
checks and sweep, the inbox escalations, the push device sweep, exports, webhooks,
retention and the reader of its appointment stream (every clinic's appointment channel
shares one subscription, ``channel``). ``reload`` brings the hub in line with the
registry: a clinic that became active starts; one that was suspended or removed has
its sockets ended and its work stopped (its database is kept); one whose settings
changed starts again with them. It runs at start-up, on a ``clinic`` message of the
control channel (sent by whichever hub or CLI made the change), and every
``RELOAD_EVERY`` seconds, for a message missed while Redis was away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from channels.appointments import ChannelListener
from channels.client import reserve
from handlers.base import Router
from handlers.services import Services
from hub.attachments.attachments import Attachments
from hub.core import clock
from hub.core.errors import HubError
from hub.core.protocol import SessionEnd
from hub.core.tasks import cancel_and_wait, every
from hub.core.tenants import DEFAULT_TENANT, Tenant
from hub.delivery.escalation import CHECK_EVERY
from hub.server.appkeys import Listeners
from hub.server.tenancy import Shared, build_listeners, build_services
from storage import mongo
from storage.clinics import ClinicActivity, ClinicRegistry

log = logging.getLogger("hub.clinics")

RELOAD_EVERY = 30.0
DEVICE_SWEEP_EVERY = 3600.0
# A background loop stops at its next await: within one Redis command's timeout.
TASK_STOP_SECONDS = 10.0
# Held for good by a clinic's stream reader (its blocking read); the appointment
# channels of every clinic share one subscription.
LISTENER_CONNECTIONS = 1


def seeds(shared: Shared) -> list[Tenant]:
    """The clinics the hub's settings name (``HUB_TENANTS``, its identity providers),
    ``default`` aside: what the registry starts with."""
    settings = shared.settings
    own = {t.tenant_id: t for t in settings.tenants}
    return [own.get(t, Tenant(t)) for t in settings.tenant_ids if t != DEFAULT_TENANT]


@dataclass(slots=True)
class _Running:
    clinic: Tenant
    services: Services
    tasks: list[asyncio.Task[None]]


class ClinicSet:
    """Starts and stops clinics in ``tenants`` and ``listeners`` (the app's own maps,
    read by the routes, the handlers and readiness), one change at a time."""

    def __init__(
        self,
        shared: Shared,
        registry: ClinicRegistry,
        tenants: dict[str, Services],
        listeners: dict[str, Listeners],
        router: Router,
        activity: ClinicActivity,
    ) -> None:
        self._shared = shared
        self._registry = registry
        self._tenants = tenants
        self._listeners = listeners
        self._router = router
        self._running: dict[str, _Running] = {}
        self._lock = asyncio.Lock()
        self._activity = activity
        poll = min(1.0, shared.settings.redis_timeout / 2)
        self.channel = ChannelListener(shared.redis, poll=poll)  # every clinic's channel
        self._channel_task: asyncio.Task[None] | None = None
        self._reported: dict[str, int] = {}  # per clinic: messages written at the last report
        default = next((t for t in shared.settings.tenants if t.tenant_id == DEFAULT_TENANT), None)
        self._default = default or Tenant(DEFAULT_TENANT)

    @property
    def served(self) -> set[str]:
        """The clinics this hub serves now."""
        return set(self._running)

    async def start(self) -> None:
        """Seed the registry with the settings' clinics, then serve the active ones."""
        await self._registry.seed(seeds(self._shared))
        await self.reload()
        # After the clinics are added: its first subscription has all their channels.
        reserve(self._shared.redis, 1)  # the channels' subscription
        self._channel_task = asyncio.create_task(self.channel.run(), name="appointments-channels")

    async def reload(self) -> None:
        """Serve what the registry says now. A clinic that fails to start is logged and
        tried again at the next reload; the others go on (``default`` failing raises)."""
        async with self._lock:
            wanted = await self._registry.served()
            wanted.pop(DEFAULT_TENANT, None)  # the hub's own: its settings, always served
            wanted = {DEFAULT_TENANT: self._default, **wanted}
            for tenant, running in list(self._running.items()):
                clinic = wanted.get(tenant)
                if clinic != running.clinic:
                    await self._stop(tenant, ended=clinic is None)
            for tenant, clinic in wanted.items():
                if tenant not in self._running:
                    try:
                        await self._start(clinic)
                    except Exception as exc:
                        if tenant == DEFAULT_TENANT:
                            raise  # the hub's own: the hub does not start without it
                        # Not served until the next reload (not its stopped services).
                        self._tenants.pop(tenant, None)
                        self._listeners.pop(tenant, None)
                        log.error("clinic %s did not start: %s", tenant, type(exc).__name__)

    async def reload_forever(self) -> None:
        """Read the registry, and report this hub's activity, every ``RELOAD_EVERY``."""

        async def reload() -> None:
            await self.reload()
            await self.report()

        await every(RELOAD_EVERY, reload, "clinic registry")

    async def report(self, now: datetime | None = None) -> None:
        """This hub's sockets per clinic, and the messages stored since the last report,
        counted on ``now``'s UTC day (``storage.clinics.ClinicActivity``)."""
        sockets: dict[str, int] = {}
        for connection in list(self._router.connections.values()):
            tenant = connection.principal.tenant
            sockets[tenant] = sockets.get(tenant, 0) + 1
        messages: dict[str, tuple[int, datetime]] = {}
        written: dict[str, int] = {}
        for tenant, running in self._running.items():
            store = running.services.messages
            written[tenant] = store.messages_written
            new = written[tenant] - self._reported.get(tenant, 0)
            if new > 0 and store.last_written_at is not None:
                messages[tenant] = (new, store.last_written_at)
        await self._activity.report(self.host_id, sockets, messages, now or clock.now())
        for tenant in messages:
            self._reported[tenant] = written[tenant]

    @property
    def host_id(self) -> str:
        return str(self._shared.sio.manager.host_id)

    async def close(self) -> None:
        """Stop every clinic's work (at shutdown, its sockets are closed already)."""
        async with self._lock:
            for tenant in list(self._running):
                await self._stop(tenant, ended=False)
        if self._channel_task is not None:
            await cancel_and_wait([self._channel_task], TASK_STOP_SECONDS)
            reserve(self._shared.redis, -1)
        try:
            await self._activity.forget_hub(self.host_id)
        except HubError:  # its report ages out of the count within 90 s all the same
            log.warning("clinics: this hub's sockets could not be taken out of the count")

    async def _start(self, clinic: Tenant) -> None:
        tenant = clinic.tenant_id
        # The app factory built the default clinic's (they are the app's SERVICES).
        services = (
            self._tenants[tenant]
            if tenant == DEFAULT_TENANT
            else build_services(self._shared, clinic)
        )
        await mongo.ensure_indexes(services.db)
        listeners = build_listeners(services, self.channel)
        reserve(services.redis, LISTENER_CONNECTIONS)
        services.messages.start()
        services.notes.start()
        self._tenants[tenant] = services
        self._listeners[tenant] = listeners
        self._running[tenant] = _Running(clinic, services, _background(services, listeners))
        if tenant != DEFAULT_TENANT:
            log.info("clinic %s served", tenant)

    async def _stop(self, tenant: str, *, ended: bool) -> None:
        """Stop clinic ``tenant``'s work; ``ended`` (suspended or removed): end its
        sockets first, and forget it."""
        running = self._running.pop(tenant)
        self._reported.pop(tenant, None)  # a new message store counts from zero
        self.channel.remove(tenant)
        if ended:
            self._tenants.pop(tenant, None)
            self._listeners.pop(tenant, None)
            count = self._router.sessions.end_clinic(tenant, SessionEnd.REVOKED)
            log.info("clinic %s no longer served: %d sockets ended", tenant, count)
        services = running.services
        await cancel_and_wait(running.tasks, TASK_STOP_SECONDS)
        for store in (services.messages, services.notes):
            await store.close()
        await services.sms.close(timeout=2.0)
        await services.attachments.close()
        await services.webhooks.close()
        await services.assistant.close()  # cancels generations: their streams close
        await services.consultations.close()
        reserve(services.redis, -LISTENER_CONNECTIONS)


def _background(services: Services, listeners: Listeners) -> list[asyncio.Task[None]]:
    """One clinic's background work, each loop a task named after it and the clinic."""
    settings = services.settings
    attachments = settings.attachments
    max_age = timedelta(seconds=settings.push.device_max_age)

    async def sms_sweep() -> None:
        await services.sms.sweep(services.sms_store)

    async def device_sweep() -> None:
        dropped = await services.push_devices.drop_unseen(clock.now() - max_age)
        if dropped:
            log.info("push devices: %d not seen for %s dropped", dropped, max_age)

    async def escalations() -> None:
        await services.escalations.run_once()

    async def retention() -> None:
        await services.retention.run_if_due()

    loops: dict[str, Awaitable[None]] = {
        "sms-sweep": every(min(60.0, services.sms.sweep_after / 4), sms_sweep, "sms outbox sweep"),
        "attachment-checks": every(
            max(1.0, attachments.retry_after / 2),
            services.attachments.check_waiting,
            "attachment checks",
        ),
        "attachment-sweep": every(
            min(3600.0, max(60.0, attachments.orphan_after / 4)),
            _sweep(services.attachments),
            "attachment sweep",
        ),
        "escalations": every(CHECK_EVERY, escalations, "inbox escalations"),
        "push-device-sweep": every(DEVICE_SWEEP_EVERY, device_sweep, "push device sweep"),
        "exports": services.exports.run_forever(),
        "webhooks": services.webhooks.run_forever(),
        "retention": every(min(300.0, settings.record.retention_every), retention, "retention"),
        "appointments-stream": listeners.stream.run(),
    }
    return [
        asyncio.create_task(_as_coroutine(loop), name=f"{name}:{services.tenant}")
        for name, loop in loops.items()
    ]


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable


def _sweep(attachments: Attachments) -> Callable[[], Awaitable[None]]:
    async def sweep() -> None:
        await attachments.sweep()

    return sweep
