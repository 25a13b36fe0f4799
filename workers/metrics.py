"""The worker's /metrics: SMS outcomes and the task queue, read at scrape time.

The worker's tasks run in pool processes, so counters kept in memory would be split
across them and lost with each one. The outbox in MongoDB already holds every SMS
cause with its state (and, for skipped ones, the reason), so the collector counts it
when Prometheus scrapes, from the worker's main process. Each scrape costs two
aggregations per clinic and one LLEN, each with a 2-second timeout; a failed read is
reported in ``hub_worker_scrape_ok`` instead of stale numbers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis import Redis

from hub.core.settings import Settings
from hub.core.tenants import DEFAULT_TENANT, ClinicState
from storage import mongo, names
from storage.push_outbox import PushOutbox
from storage.sms_outbox import SmsOutbox
from storage.tenants import platform_database, tenant_database

log = logging.getLogger("hub.worker")

TIMEOUT_MS = 2000
CELERY_QUEUE = "celery"  # Celery's default queue, the one the SMS tasks use


ALL_CLINICS = "all"  # the `tenant` label without HUB_METRICS_PER_CLINIC: bounded cardinality


class SmsCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        assert settings.mongodb_url is not None
        self._settings = settings
        self._mongo = mongo.connect_sync(settings.mongodb_url, TIMEOUT_MS / 1000)
        # Per clinic: each has its outbox in its own database.
        self._outboxes: dict[str, tuple[SmsOutbox, PushOutbox]] = {}
        self._per_clinic = settings.metrics_per_clinic
        self._redis = Redis.from_url(
            settings.broker_url,
            socket_timeout=TIMEOUT_MS / 1000,
            socket_connect_timeout=TIMEOUT_MS / 1000,
        )

    def _clinics(self) -> dict[str, tuple[SmsOutbox, PushOutbox]]:
        """The outboxes of every clinic the registry says is served, and ``default``."""
        platform = platform_database(self._mongo, self._settings.mongodb_db)
        served = [DEFAULT_TENANT] + [
            doc["_id"]
            for doc in platform[names.CLINICS].find(
                {"state": ClinicState.ACTIVE}, {"_id": True}, max_time_ms=TIMEOUT_MS
            )
            if doc["_id"] != DEFAULT_TENANT
        ]
        for tenant in served:
            if tenant not in self._outboxes:
                db = tenant_database(self._mongo, self._settings.mongodb_db, tenant)
                self._outboxes[tenant] = (SmsOutbox(db), PushOutbox(db))
        return {tenant: self._outboxes[tenant] for tenant in served}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ok = GaugeMetricFamily(
            "hub_worker_scrape_ok", "1 if MongoDB and the broker answered this scrape", value=1
        )
        outbox = GaugeMetricFamily(
            "hub_sms_outbox",
            "SMS causes by state (and reason, for skipped ones)",
            labels=["state", "reason", "tenant"],
        )
        push = GaugeMetricFamily(
            "hub_push_outbox",
            "Pushes by state: one per cause and device (sent, gone, failed, unknown, ...)",
            labels=["state", "tenant"],
        )
        errors = GaugeMetricFamily(
            "hub_push_errors",
            "Pushes failed by an error other than the push service's answer, by its type",
            labels=["error", "tenant"],
        )
        queue = GaugeMetricFamily(
            "hub_worker_queue_length", "Tasks waiting in the broker (not yet taken by a worker)"
        )
        try:
            sms_counts: Counter[tuple[str, ...]] = Counter()
            push_counts: Counter[tuple[str, ...]] = Counter()
            error_counts: Counter[tuple[str, ...]] = Counter()
            for tenant, (sms, pushes) in self._clinics().items():
                label = tenant if self._per_clinic else ALL_CLINICS
                for (state, reason), count in sms.counts(TIMEOUT_MS).items():
                    sms_counts[(state, reason, label)] += count
                for state, count in pushes.counts(TIMEOUT_MS).items():
                    push_counts[(state, label)] += count
                for error, count in pushes.error_counts(TIMEOUT_MS).items():
                    error_counts[(error, label)] += count
            for family, counts in (
                (outbox, sms_counts),
                (push, push_counts),
                (errors, error_counts),
            ):
                for labels, count in counts.items():
                    family.add_metric(list(labels), count)
            queue.add_metric([], float(self._redis.llen(CELERY_QUEUE)))
        except Exception as exc:  # a scrape must answer; the gauge says it is incomplete
            log.warning("worker metrics: %s", type(exc).__name__)
            ok = GaugeMetricFamily(
                "hub_worker_scrape_ok", "1 if MongoDB and the broker answered this scrape", value=0
            )
        yield ok
        yield outbox
        yield push
        yield errors
        yield queue


def serve_metrics(settings: Settings) -> None:
    """Start /metrics on ``HUB_WORKER_METRICS_PORT`` in a daemon thread (0: none).
    A port in use is logged, not fatal: the worker's job is sending SMS."""
    if not settings.worker_metrics_port:
        return
    registry = CollectorRegistry()
    registry.register(SmsCollector(settings))
    try:
        start_http_server(settings.worker_metrics_port, addr=settings.host, registry=registry)
    except OSError as exc:
        log.warning(
            "worker metrics: port %d unavailable (%s)",
            settings.worker_metrics_port,
            type(exc).__name__,
        )
        return
    log.info("worker metrics on http://%s:%d/metrics", settings.host, settings.worker_metrics_port)
