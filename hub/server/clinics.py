"""The clinics this hub serves, as the platform's registry says while the hub runs.

``ClinicSet`` is the app's map of clinics (``appkeys.TENANTS``): every active clinic
of the registry, and ``default`` (the hub's own, configured by its settings). A
clinic's services (``hub.server.tenancy``) are built on its first use here (a socket,
a request, an appointment event) and dropped after ``IDLE_AFTER`` seconds without one
and without a socket here, so an idle clinic costs a hub an entry in a dict. What
runs for every clinic runs once for them all: one reader of every clinic's
appointment stream and one subscription to every clinic's channel
(``channels.appointments``), one loop per kind of background work
(``hub.server.background``).

``reload`` brings the hub in line with the registry: a clinic that became active is
served (its database's indexes made first, once for the fleet; a new release's
indexes are made in the background, the clinic served meanwhile); one that was
suspended or removed has its sockets ended and its services dropped (its database is
kept); one whose settings changed has its services dropped, to be built again with
them. It runs at start-up, on a ``clinic`` message of the control channel (sent by
whichever hub or CLI made the change), and every ``RELOAD_EVERY`` seconds, for a
message missed while Redis was away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from channels.appointments import ChannelListener, Handle, StreamConsumer
from channels.client import reserve
from channels.lease import Lease
from channels.names import SWEEP_LEASE
from handlers.base import Router
from handlers.services import Services
from hub.core import clock
from hub.core.errors import HubError
from hub.core.protocol import SessionEnd
from hub.core.settings import Settings
from hub.core.tasks import cancel_and_wait, every
from hub.core.tenants import DEFAULT_TENANT, OidcIssuer, Tenant
from hub.server.appkeys import Listeners
from hub.server.background import LEASE_TTL, IdleRounds, KindLoop, kinds
from hub.server.tenancy import Shared, build_services
from storage import mongo
from storage.clinics import ClinicActivity, ClinicRegistry
from storage.messages import MessageStore
from storage.mongo import INDEXES_VERSION
from storage.tenants import tenant_database

log = logging.getLogger("hub.clinics")

RELOAD_EVERY = 30.0
IDLE_AFTER = 1800.0  # seconds without use after which a clinic's services are dropped
IDLE_CHECK_EVERY = 60.0
# A background loop stops at its next await: within one Redis command's timeout.
TASK_STOP_SECONDS = 10.0
INDEXING_AT_ONCE = 8  # clinics whose indexes are made together


def default_clinic(settings: Settings) -> Tenant:
    """The hub's own clinic, with what ``HUB_TENANTS`` says of ``default``, if anything."""
    own = next((t for t in settings.tenants if t.tenant_id == DEFAULT_TENANT), None)
    return own or Tenant(DEFAULT_TENANT)


def seeds(shared: Shared) -> list[Tenant]:
    """The clinics the hub's settings name (``HUB_TENANTS``, its identity providers),
    ``default`` aside: what the registry starts with."""
    settings = shared.settings
    own = {t.tenant_id: t for t in settings.tenants}
    return [own.get(t, Tenant(t)) for t in settings.tenant_ids if t != DEFAULT_TENANT]


@dataclass(slots=True)
class _Built:
    clinic: Tenant
    services: Services
    used_at: float  # monotonic


class ClinicSet(Mapping[str, Services]):
    """The clinics served, by id; looking one up builds its services if need be.

    ``clinic in clinics`` (the token verifier's check) says whether it is served,
    without building anything."""

    def __init__(
        self,
        shared: Shared,
        registry: ClinicRegistry,
        default: Services,
        activity: ClinicActivity,
    ) -> None:
        self._shared = shared
        self._registry = registry
        self._default = default_clinic(shared.settings)
        self._served: dict[str, Tenant] = {DEFAULT_TENANT: self._default}
        self._issuers: dict[str, OidcIssuer] = {}
        self._built: dict[str, _Built] = {}
        self._default_services = default  # the app factory's: the app's SERVICES
        self._lock = asyncio.Lock()
        self._activity = activity
        self._reported: dict[str, int] = {}  # per clinic: messages written at the last report
        self._unreported: dict[str, tuple[int, datetime]] = {}  # of services dropped since
        self.router: Router | None = None  # set by the app factory, which makes both
        settings = shared.settings
        poll = min(1.0, settings.redis_timeout / 2)
        self.channel = ChannelListener(shared.redis, self._handle_of, poll=poll)
        self.stream = StreamConsumer(
            shared.redis,
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            self._handle_of,
            claim_after=settings.stream_claim_after,
            # A blocking read must return before the client's socket timeout fires.
            block=poll,
        )
        self.listeners = Listeners(stream=self.stream, channel=self.channel)
        every_kind = kinds(settings)
        self.loops = {kind.name: KindLoop(kind, self.in_use) for kind in every_kind}
        self.idle_rounds = IdleRounds(
            Lease(shared.redis, SWEEP_LEASE, self.host_id, LEASE_TTL),
            every_kind,
            lambda: [c for t, c in self._served.items() if t not in self._built],
            lambda tenant: tenant in self._served and tenant not in self._built,
            self._build,
            _close,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._upgrading: set[str] = set()  # clinics whose indexes are being made anew
        self._upgrades: set[asyncio.Task[None]] = set()
        self._built[DEFAULT_TENANT] = _Built(self._default, default, time.monotonic())

    # The map of clinics served.
    def __getitem__(self, tenant: str) -> Services:
        services = self._open(tenant)
        if services is None:
            raise KeyError(tenant)
        return services

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._served

    def __iter__(self) -> Iterator[str]:
        return iter(self._served)

    def __len__(self) -> int:
        return len(self._served)

    @property
    def served(self) -> set[str]:
        """The clinics this hub serves now."""
        return set(self._served)

    def issuers(self) -> dict[str, OidcIssuer]:
        """The identity providers of the clinics served, by issuer."""
        return self._issuers

    def _own_issuers(self, clinics: dict[str, Tenant]) -> dict[str, OidcIssuer]:
        configured = {issuer.issuer for issuer in self._shared.settings.oidc_issuers}
        issuers: dict[str, OidcIssuer] = {}
        for tenant in sorted(clinics):
            issuer = clinics[tenant].identity_provider
            if issuer is None:
                continue
            if issuer.issuer in configured or issuer.issuer in issuers:
                # The operator API refuses this; two changes at once can still make it.
                log.error("clinic %s: its identity provider is another's: ignored", tenant)
                continue
            issuers[issuer.issuer] = issuer
        return issuers

    @property
    def upgrading(self) -> set[str]:
        """The clinics served while their indexes are made anew (a new release's)."""
        return set(self._upgrading)

    def in_use(self) -> dict[str, Services]:
        """The clinics whose services are built here, without counting as a use."""
        return {tenant: built.services for tenant, built in self._built.items()}

    @property
    def host_id(self) -> str:
        return str(self._shared.sio.manager.host_id)

    async def start(self) -> None:
        """Seed the registry with the settings' clinics, serve the active ones, and
        start the work every clinic shares."""
        await mongo.ensure_indexes(self._default_services.db)
        self._start(self._default_services)
        await self._registry.seed(seeds(self._shared))
        await self.reload()
        reserve(self._shared.redis, 2)  # the stream's blocking read, the subscription
        work = {
            "appointments-stream": self.stream.run(),
            "appointments-channels": self.channel.run(),
            "idle-clinics": self.idle_rounds.run(),
            "unused-clinics": every(IDLE_CHECK_EVERY, self.drop_unused, "unused clinics"),
            **{name: loop.run() for name, loop in self.loops.items()},
        }
        self._tasks = [asyncio.create_task(run, name=name) for name, run in work.items()]

    async def reload(self) -> None:
        """Serve what the registry says now. A clinic whose indexes cannot be made is
        logged and tried again at the next reload; the others go on."""
        async with self._lock:
            registered = await self._registry.served()
            registered.pop(DEFAULT_TENANT, None)  # the hub's own: its settings, always
            failed = await self._index([t for t, (_, made) in registered.items() if not made])
            older = [
                tenant
                for tenant, (_, made) in registered.items()
                if made not in (None, INDEXES_VERSION) and tenant not in self._upgrading
            ]
            if older:
                # Served on the indexes they have meanwhile: a hub upgraded to new
                # indexes is ready at once, as with no change.
                self._upgrading.update(older)
                task = asyncio.create_task(self._upgrade(older), name="index-upgrade")
                self._upgrades.add(task)
                task.add_done_callback(self._upgrades.discard)
            wanted = {DEFAULT_TENANT: self._default}
            wanted.update((t, c) for t, (c, _) in registered.items() if t not in failed)
            for tenant in set(self._served) - set(wanted):
                await self._end(tenant)
            for tenant, built in list(self._built.items()):
                if tenant != DEFAULT_TENANT and wanted.get(tenant) != built.clinic:
                    await self._drop(tenant)  # its settings changed: built again on use
            for tenant in wanted:
                self.stream.add(tenant)
                self.channel.add(tenant)
            self._served = wanted
            self._issuers = self._own_issuers(wanted)

    async def reload_forever(self) -> None:
        """Read the registry, and report this hub's activity, every ``RELOAD_EVERY``."""

        async def reload() -> None:
            await self.reload()
            await self.report()

        await every(RELOAD_EVERY, reload, "clinic registry")

    async def drop_unused(self, now: float | None = None) -> None:
        """Drop the services of each clinic unused for ``IDLE_AFTER`` seconds that has
        no socket here (``default``'s are the app's, and stay)."""
        now = time.monotonic() if now is None else now
        async with self._lock:  # not while a reload drops clinics too
            sockets = self._sockets()
            for tenant, built in list(self._built.items()):
                if tenant == DEFAULT_TENANT or sockets.get(tenant):
                    continue
                if now - built.used_at >= IDLE_AFTER and tenant in self._built:
                    await self._drop(tenant)

    async def report(self, now: datetime | None = None) -> None:
        """This hub's sockets per clinic, and the messages stored since the last report,
        counted on ``now``'s UTC day (``storage.clinics.ClinicActivity``)."""
        messages = dict(self._unreported)
        written: dict[str, int] = {}
        for tenant, built in self._built.items():
            store = built.services.messages
            written[tenant] = store.messages_written
            new = self._new_messages(tenant, store)
            if new is not None:
                earlier, _ = messages.get(tenant, (0, new[1]))
                messages[tenant] = (earlier + new[0], new[1])
        await self._activity.report(self.host_id, self._sockets(), messages, now or clock.now())
        self._unreported.clear()
        for tenant in messages:
            if tenant in written:
                self._reported[tenant] = written[tenant]

    async def close(self) -> None:
        """Stop the shared work and every clinic's services (at shutdown, its sockets
        are closed already)."""
        self._closed = True
        await cancel_and_wait(list(self._upgrades), TASK_STOP_SECONDS)
        await cancel_and_wait(self._tasks, TASK_STOP_SECONDS)
        if self._tasks:
            reserve(self._shared.redis, -2)
        self._tasks = []
        await self.idle_rounds.release()
        async with self._lock:
            for tenant in list(self._built):
                await self._drop(tenant)
        try:
            await self._activity.forget_hub(self.host_id)
        except HubError:  # its report ages out of the count within 90 s all the same
            log.warning("clinics: this hub's sockets could not be taken out of the count")

    def _open(self, tenant: str) -> Services | None:
        """Clinic ``tenant``'s services, built now if they are not; None if it is not
        served. Counts as a use."""
        built = self._built.get(tenant)
        if built is None:
            clinic = self._served.get(tenant)
            if clinic is None or self._closed:
                return None  # not served, or the hub is stopping: nothing new is built
            services = self._build(clinic)
            self._wire(services)
            built = self._built[tenant] = _Built(clinic, services, time.monotonic())
            log.debug("clinic %s in use", tenant)
        built.used_at = time.monotonic()
        return built.services

    def _handle_of(self, tenant: str) -> Handle | None:
        services = self._open(tenant)
        return None if services is None else services.updates.handle

    def _build(self, clinic: Tenant) -> Services:
        services = build_services(self._shared, clinic)
        services.messages.start()
        services.notes.start()
        return services

    def _start(self, services: Services) -> None:
        """The default clinic's services, which the app factory built (the app's
        ``SERVICES``), started as ``_build`` starts the others'."""
        services.messages.start()
        services.notes.start()
        self._wire(services)

    def _wire(self, services: Services) -> None:
        """What is queued through these services is handled at once by the shared loops."""
        tenant = services.tenant
        services.exports.kick = lambda: self.loops["exports"].kick(tenant)
        services.webhooks.kick = lambda: self.loops["webhooks"].kick(tenant)

    async def _index(self, tenants: list[str]) -> set[str]:
        """Make the indexes of newly served clinics' databases (``INDEXING_AT_ONCE`` at
        a time), and say so in the registry; the clinics that failed, which are not
        served until a reload makes them."""
        limit = asyncio.Semaphore(INDEXING_AT_ONCE)
        settings = self._shared.settings

        async def index(tenant: str) -> str | None:
            async with limit:
                try:
                    db = tenant_database(self._shared.mongo, settings.mongodb_db, tenant)
                    await mongo.ensure_indexes(db)
                except HubError as exc:
                    log.error("clinic %s: its indexes could not be made: %s", tenant, exc.code)
                    return None
                return tenant

        done = [t for t in await asyncio.gather(*(index(t) for t in tenants)) if t is not None]
        if done:
            await self._registry.mark_indexed(done)
        return set(tenants) - set(done)

    async def _upgrade(self, tenants: list[str]) -> None:
        """Make the indexes of clinics served on an older ``INDEXES_VERSION``'s."""
        try:
            failed = await self._index(tenants)
            log.info("indexes of %d clinics made anew", len(tenants) - len(failed))
        except HubError as exc:  # the registry: they are made again at the next reload
            log.warning("indexes made anew, not recorded: %s", exc.code)
        finally:
            self._upgrading.difference_update(tenants)  # failed: at the next reload

    async def _end(self, tenant: str) -> None:
        """Clinic ``tenant`` is suspended or removed: its sockets end, its services go."""
        self._served.pop(tenant, None)
        self.stream.remove(tenant)
        self.channel.remove(tenant)
        count = self.router.sessions.end_clinic(tenant, SessionEnd.REVOKED) if self.router else 0
        log.info("clinic %s no longer served: %d sockets ended", tenant, count)
        if tenant in self._built:
            await self._drop(tenant)

    async def _drop(self, tenant: str) -> None:
        built = self._built.pop(tenant)
        new = self._new_messages(tenant, built.services.messages)
        self._reported.pop(tenant, None)  # services built again count from zero
        if new is not None:  # counted at the next report
            self._unreported[tenant] = new
        await _close(built.services)
        log.debug("clinic %s dropped", tenant)

    def _new_messages(self, tenant: str, store: MessageStore) -> tuple[int, datetime] | None:
        """The messages ``store`` wrote since the last report, and when the last one was."""
        new = store.messages_written - self._reported.get(tenant, 0)
        if new <= 0 or store.last_written_at is None:
            return None
        return new, store.last_written_at

    def _sockets(self) -> dict[str, int]:
        sockets: dict[str, int] = {}
        connections = self.router.connections.values() if self.router else ()
        for connection in list(connections):
            tenant = connection.principal.tenant
            sockets[tenant] = sockets.get(tenant, 0) + 1
        return sockets


async def _close(services: Services) -> None:
    """Stop what a clinic's services run (what is queued stays in its store)."""
    for store in (services.messages, services.notes):
        await store.close()
    await services.sms.close(timeout=2.0)
    await services.attachments.close()
    await services.webhooks.close()
    await services.assistant.close()  # cancels generations: their streams close
    await services.consultations.close()
