"""The clinics' background work: one loop per kind, over every clinic.

Each kind (the SMS outbox sweep, the attachment checks and sweep, the inbox
escalations, the push device sweep, exports, webhook deliveries, retention) is one
task for the whole hub (``KindLoop``). At its interval it runs its step for each clinic
in use on this hub (whose services are built: ``hub.server.clinics``); a step asked for
at once (an export or a webhook event queued here: ``kick``) runs at once for that
clinic alone. Every step is safe to run on several hubs at a time (claims and leases
in the store), as it always was.

A clinic in use on no hub still has work coming due: an SMS handed over and never
confirmed, a conversation waiting past its escalation time, an orphaned upload,
retention. One hub of the fleet at a time, the holder of the sweep lease
(``channels.names.SWEEP_LEASE``), goes round the clinics not in use on it once every
``IDLE_ROUND`` seconds (``IdleRounds``), spread over the round: for each, the step of
every kind whose interval has passed, on services made for that and closed after. So
a clinic's background work runs at least every ``IDLE_ROUND`` seconds (or its kind's
longer interval), and as often as its kind says while the clinic is in use on some
hub.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from channels.client import RedisFailure
from channels.lease import Lease
from handlers.services import Services
from hub.core import clock
from hub.core.errors import HubError
from hub.core.settings import Settings
from hub.core.tasks import raise_if_cancelled
from hub.core.tenants import Tenant
from hub.delivery.escalation import CHECK_EVERY
from hub.record.exports import LOOK_EVERY

log = logging.getLogger("hub.background")

DEVICE_SWEEP_EVERY = 3600.0
IDLE_ROUND = 600.0  # seconds for one round of the clinics in use on no hub
LEASE_TTL = 60.0  # a lease holder that stopped is replaced within this
LEASE_RETRY = 30.0  # seconds between two asks of a hub that does not hold the lease

Step = Callable[[Services], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    every: float  # seconds between two runs for each clinic in use
    step: Step


def kinds(settings: Settings) -> list[Kind]:
    """Every kind of background work, at the intervals the hub's settings give."""
    attachments = settings.attachments
    max_age = timedelta(seconds=settings.push.device_max_age)

    async def sms_sweep(services: Services) -> None:
        await services.sms.sweep(services.sms_store)

    async def attachment_checks(services: Services) -> None:
        await services.attachments.check_waiting()

    async def attachment_sweep(services: Services) -> None:
        await services.attachments.sweep()

    async def escalations(services: Services) -> None:
        await services.escalations.run_once()

    async def device_sweep(services: Services) -> None:
        dropped = await services.push_devices.drop_unseen(clock.now() - max_age)
        if dropped:
            log.info("push devices: %d not seen for %s dropped", dropped, max_age)

    async def exports(services: Services) -> None:
        await services.exports.run_once()

    async def webhooks(services: Services) -> None:
        await services.webhooks.run_once()

    async def retention(services: Services) -> None:
        await services.retention.run_if_due()

    sms_every = min(60.0, settings.sms.sweep_after / 4)
    return [
        Kind("sms-sweep", sms_every, sms_sweep),
        Kind("attachment-checks", max(1.0, attachments.retry_after / 2), attachment_checks),
        Kind(
            "attachment-sweep",
            min(3600.0, max(60.0, attachments.orphan_after / 4)),
            attachment_sweep,
        ),
        Kind("escalations", CHECK_EVERY, escalations),
        Kind("push-device-sweep", DEVICE_SWEEP_EVERY, device_sweep),
        Kind("exports", LOOK_EVERY, exports),
        Kind("webhooks", min(1.0, settings.webhook_first_retry), webhooks),
        Kind("retention", min(300.0, settings.record.retention_every), retention),
    ]


async def run_step(kind: Kind, services: Services) -> None:
    """One clinic's step of ``kind``; a failure is logged, never raised (the others go on)."""
    try:
        await kind.step(services)
    except asyncio.CancelledError:
        raise
    except HubError as exc:
        log.warning("%s of clinic %s: %s", kind.name, services.tenant, exc.code)
    except Exception as exc:
        log.error("%s of clinic %s failed: %s", kind.name, services.tenant, type(exc).__name__)


class KindLoop:
    """One kind of work for every clinic in use on this hub (``in_use``)."""

    def __init__(self, kind: Kind, in_use: Callable[[], Mapping[str, Services]]) -> None:
        self.kind = kind
        self._in_use = in_use
        self._kicked: set[str] = set()
        self._woken = asyncio.Event()

    def kick(self, tenant: str) -> None:
        """Run clinic ``tenant``'s step now, not at the next interval."""
        self._kicked.add(tenant)
        self._woken.set()

    async def run(self) -> None:
        next_round = time.monotonic() + self.kind.every
        while True:
            raise_if_cancelled()
            try:
                await asyncio.wait_for(self._woken.wait(), max(0.0, next_round - time.monotonic()))
            except TimeoutError:
                pass
            self._woken.clear()
            due = set(self._kicked)
            self._kicked.clear()
            if time.monotonic() >= next_round:
                due.update(self._in_use())  # the clinics in use now
                next_round = time.monotonic() + self.kind.every
            in_use = self._in_use()
            for tenant in sorted(due):
                services = in_use.get(tenant)
                if services is not None:  # else dropped: the idle rounds have it
                    await run_step(self.kind, services)


class IdleRounds:
    """The rounds of the clinics in use on no hub, by the holder of the sweep lease."""

    def __init__(
        self,
        lease: Lease,
        kinds: list[Kind],
        idle: Callable[[], list[Tenant]],
        is_idle: Callable[[str], bool],
        build: Callable[[Tenant], Services],
        close: Callable[[Services], Awaitable[None]],
        *,
        round_every: float = IDLE_ROUND,
        retry: float = LEASE_RETRY,
    ) -> None:
        self._lease = lease
        self._kinds = kinds
        self._idle = idle
        self._is_idle = is_idle
        self._build = build
        self._close = close
        self._round_every = round_every
        self._retry = retry
        self.rounds = 0  # rounds completed (for tests and the log)
        # When this hub last ran each kind for each clinic: a kind whose interval is
        # longer than a round (the push device sweep, hourly) runs at its interval.
        self._last: dict[tuple[str, str], float] = {}

    async def run(self) -> None:
        while True:
            raise_if_cancelled()
            if await self._held():
                await self._round()
                self.rounds += 1
            else:
                await asyncio.sleep(self._retry)

    async def _held(self) -> bool:
        try:
            return await self._lease.hold()
        except RedisFailure as exc:
            log.warning("sweep lease: %s", type(exc).__name__)
            return False

    async def _round(self) -> None:
        """Each idle clinic's steps once, spread evenly over ``round_every`` seconds;
        stops early if the lease is lost."""
        clinics = self._idle()
        if not clinics:
            await asyncio.sleep(self._round_every)  # none now: look again next round
            return
        pause = self._round_every / len(clinics)
        renewed = time.monotonic()
        for clinic in clinics:
            await asyncio.sleep(pause)
            if time.monotonic() - renewed > LEASE_TTL / 3:
                if not await self._held():
                    return
                renewed = time.monotonic()
            if not self._is_idle(clinic.tenant_id):
                continue  # in use here since, or no longer served
            now = time.monotonic()
            due = [
                kind
                for kind in self._kinds
                if now - self._last.get((clinic.tenant_id, kind.name), -kind.every) >= kind.every
            ]
            if not due:
                continue  # only kinds of longer intervals than a round, run lately
            services = self._build(clinic)
            try:
                for kind in due:
                    self._last[clinic.tenant_id, kind.name] = now
                    await run_step(kind, services)
            finally:
                await self._close(services)

    async def release(self) -> None:
        try:
            await self._lease.release()
        except RedisFailure:
            pass  # it expires within LEASE_TTL
