"""Prometheus metrics of one hub process, served at ``GET /metrics``.

Each app has its own registry (tests run several hubs in one process). Counters and
histograms are updated where things happen; gauges that describe state (connections,
the appointment stream's lag) are read when Prometheus scrapes. No label ever holds
a user id, a message or anything a patient said: labels are event names, outcomes,
operation names and error codes, all from fixed sets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds: sub-millisecond to a few seconds, where acks and writes live.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MODEL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sockets = Gauge(
            "hub_connected_sockets", "Authenticated sockets on this process", registry=r
        )
        self.users = Gauge("hub_connected_users", "Distinct users with a socket here", registry=r)
        self.connections = Counter(
            "hub_connections_total", "Connection attempts by outcome", ["outcome"], registry=r
        )
        self.sessions_ended = Counter(
            "hub_sessions_ended_total",
            "Sockets the hub disconnected because their session ended, by reason",
            ["reason"],
            registry=r,
        )
        self.refused_frames = Counter(
            "hub_refused_frames_total",
            "Frames from clients refused before any handler: malformed, unknown or "
            "reserved, by reason",
            ["reason"],
            registry=r,
        )
        self.dropped_sockets = Counter(
            "hub_dropped_sockets_total",
            "Sockets the hub disconnected itself, by reason",
            ["reason"],
            registry=r,
        )
        self.events = Counter(
            "hub_events_total",
            "Socket.IO events handled, by outcome",
            ["event", "outcome"],
            registry=r,
        )
        self.ack_seconds = Histogram(
            "hub_ack_seconds",
            "Event received to ack sent",
            ["event"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.mongo_write_seconds = Histogram(
            "hub_mongodb_write_seconds",
            "One MongoDB write round trip, by operation",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_lag = Gauge(
            "hub_appointments_stream_lag",
            "Entries of the appointment stream not yet read by the group",
            registry=r,
        )
        self.stream_pending = Gauge(
            "hub_appointments_stream_pending", "Entries read but not yet acknowledged", registry=r
        )
        self.listeners_alive = Gauge(
            "hub_listener_alive", "1 while the listener runs", ["listener"], registry=r
        )
        self.appointment_events = Counter(
            "hub_appointment_events_total", "Appointment events by outcome", ["outcome"], registry=r
        )
        self.sms_scheduled = Counter(
            "hub_sms_scheduled_total",
            "Fallback tasks (push and SMS) handed to the workers, by outcome",
            ["outcome"],
            registry=r,
        )
        self.llm_first_token_seconds = Histogram(
            "hub_llm_first_token_seconds",
            "Request to the model's first token, by kind",
            ["kind"],
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.llm_requests = Counter(
            "hub_llm_requests_total",
            "Assistant generations by kind and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.fanout_messages = Counter(
            "hub_fanout_messages_total",
            "Socket.IO manager messages (emits) published for the other hubs",
            registry=r,
        )
        self.fanout_received = Counter(
            "hub_fanout_received_total",
            "Fan-out messages this hub read from Redis: what the other hubs addressed to "
            "its rooms, to every hub, or to it",
            registry=r,
        )
        self.fanout_batches = Counter(
            "hub_fanout_batches_total",
            "Round trips to Redis that carried them (one pipeline of PUBLISH per batch)",
            registry=r,
        )
        self.consultation_cache = Counter(
            "hub_consultation_cache_total",
            "assistant:ask reads of a consultation: hit (kept copy), miss (MongoDB), "
            "bypass (Redis unreachable: MongoDB)",
            ["result"],
            registry=r,
        )
        self.first_response_seconds = Histogram(
            "hub_inbox_first_response_seconds",
            "From a patient's first unanswered message in a pool conversation to the "
            "clinic's answer, by pool (wall-clock time)",
            ["pool"],
            buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800),
            registry=r,
        )
        self.attachments = Counter(
            "hub_attachments_total",
            "Uploads by outcome: refused (at upload), released, rejected (by a check), "
            "deferred (the scanner could not say: checked again later), deleted (sweep)",
            ["outcome"],
            registry=r,
        )
        self.attachment_bytes = Counter(
            "hub_attachment_upload_bytes_total", "Bytes of uploads received", registry=r
        )
        self.attachment_check_seconds = Histogram(
            "hub_attachment_check_seconds",
            "An upload's checks (scan, image re-encoding), by step",
            ["step"],
            buckets=MODEL_BUCKETS,
            registry=r,
        )

        self.webhook_deliveries = Counter(
            "hub_webhook_deliveries_total",
            "Tries of webhook deliveries by outcome: delivered, retry (failed, tried again "
            "later), dead (failed for good: waits for a replay)",
            ["outcome"],
            registry=r,
        )
        self.exports = Counter(
            "hub_exports_total",
            "Patients' exports built, by outcome: ready, failed",
            ["outcome"],
            registry=r,
        )
        self.retention_deleted = Counter(
            "hub_retention_deleted_total",
            "Documents the retention policy deleted (or emptied to stubs), by kind",
            ["kind"],
            registry=r,
        )

    @contextmanager
    def mongo_write(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.mongo_write_seconds.labels(operation).observe(time.perf_counter() - started)
