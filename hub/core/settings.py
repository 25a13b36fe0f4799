"""Settings: the environment is read once, here, into a typed object.

Every other module receives a :class:`Settings` (or a part of it) through its
constructor; none reads ``os.environ`` itself. An invalid value raises
:class:`~hub.core.errors.ConfigError` naming the variable, so a bad deployment fails at
start-up, not at the first message.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from hub.core.errors import ConfigError
from hub.core.phone import check_e164
from hub.core.sms_texts import KINDS, check_template
from hub.core.tenants import (
    DEFAULT_TENANT,
    OidcIssuer,
    Tenant,
    parse_issuer,
    parse_tenants,
)

T = TypeVar("T")

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# The roles a token may carry (hub.core.auth.ROLES; settings cannot import auth).
JWT_SECRET_FILE = "jwt-secret"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``rate`` events per second on average, bursts up to ``burst``."""

    rate: float
    burst: float


@dataclass(frozen=True, slots=True)
class SmsSettings:
    """The SMS fallback: when it fires, what it says, and how it reaches Twilio.

    Without ``twilio_account_sid`` and ``twilio_auth_token`` the driver is ``log``:
    outbox records are kept and the masked SMS is logged, nothing is sent.
    """

    fallback_after: float = 120.0
    coalesce: float = 1800.0
    daily_cap: int = 3
    quiet_hours: tuple[int, int] = (21 * 60, 8 * 60)  # minutes after local midnight
    clinic_name: str = "Clinic"
    templates: Mapping[str, str] = field(default_factory=dict)  # kind -> template
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from_number: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_base_url: str = "https://api.twilio.com"
    twilio_timeout: float = 10.0
    retry_base: float = 2.0  # seconds; doubled at each retry, with jitter
    sweep_after: float = 600.0  # seconds an outbox row may stay open before a hub retries it
    max_retries: int = 5

    @property
    def driver(self) -> str:
        return "twilio" if self.twilio_account_sid and self.twilio_auth_token else "log"


@dataclass(frozen=True, slots=True)
class AssistantSettings:
    """The LLM assistant of live consultations, through an Ollama server."""

    ollama_host: str = "http://127.0.0.1:11434"
    model: str = "llama3.2"
    timeout: float = 30.0  # seconds to the first token, and between two tokens
    num_ctx: int = 4096  # the model's context, in tokens; prompts are kept within it
    num_predict: int = 512  # longest answer, in tokens (reserved out of num_ctx)
    concurrency: int = 4  # generations at once from one hub process
    queue_wait: float = 2.0  # seconds a request waits for a slot before "unavailable"
    every_segments: int = 5
    every_seconds: float = 30.0
    stream_interval: float = 0.1  # seconds between two deltas of one stream (tokens batched)
    cached_consultations: int = 256  # kept per process for assistant:ask (0: none)


ATTACHMENT_KINDS = ("jpeg", "png", "heic", "webp", "pdf")


@dataclass(frozen=True, slots=True)
class AttachmentSettings:
    """Uploads: limits, the malware scanner, image decoding, download links."""

    max_bytes: int = 20 * 1024 * 1024
    daily_bytes: int = 200 * 1024 * 1024  # a person's uploads in any 24 hours
    per_message: int = 5
    kinds: tuple[str, ...] = ATTACHMENT_KINDS
    clamd_url: str | None = None  # tcp://host:port or unix:///path
    clamd_timeout: float = 60.0  # one scan, from connecting to the verdict
    unscanned: bool = False  # accept uploads with no scanner (HUB_ATTACHMENTS_UNSCANNED)
    max_pixels: int = 50_000_000  # an image declaring more is refused before decoding
    process_timeout: float = 30.0  # seconds to decode one image, or to parse one PDF
    retry_after: float = 30.0  # an upload the scanner could not scan is tried again after
    url_ttl: float = 300.0  # lifetime of a signed download link
    url_key: str | None = None  # signs download links; derived from HUB_JWT_SECRET if unset
    orphan_after: float = 24 * 3600.0  # an upload never attached is deleted after this


@dataclass(frozen=True, slots=True)
class PushSettings:
    """Push notifications: Web Push (VAPID) and Firebase Cloud Messaging."""

    vapid_private_key: str | None = None  # base64url of the raw P-256 key, or PEM
    vapid_public_key: str | None = None  # derived from the private key: for browsers
    vapid_subject: str | None = None  # mailto: or https: contact for push services
    fcm_credentials: str | None = None  # path of a service-account JSON file
    fcm_base_url: str = "https://fcm.googleapis.com"
    timeout: float = 10.0  # seconds per request to a push service
    sms_after_push: float = 600.0  # an SMS waits this long after a push went out
    ttl: int = 24 * 3600  # seconds a push service keeps a push for a device that is off
    # Origins of Web Push endpoints exempt from the https and public-address checks:
    # a development machine's or a test's own push service. Never in production.
    unchecked_origins: tuple[str, ...] = ()
    device_max_age: float = 90 * 86400.0  # devices not seen for this long are dropped

    @property
    def webpush(self) -> bool:
        return self.vapid_private_key is not None

    @property
    def fcm(self) -> bool:
        return self.fcm_credentials is not None


# What the retention policy counts in days, each kind with its own period.
RECORD_KINDS = ("messages", "attachments", "transcripts", "assistant", "notifications")


@dataclass(frozen=True, slots=True)
class RecordSettings:
    """The medical record: edit and retract windows, retention, exports.

    ``retention_days`` maps each of :data:`RECORD_KINDS` to days kept, or None to keep
    forever (the default); a policy the clinic's back-end sets replaces it kind by kind.
    """

    edit_window: float = 900.0  # seconds after sending a message its sender may edit it
    patient_retract_window: float = 900.0  # a patient's; the clinic's people retract any time
    retention_days: Mapping[str, int | None] = field(
        default_factory=lambda: dict.fromkeys(RECORD_KINDS)
    )
    retention_every: float = 3600.0  # seconds between two retention runs (one hub at a time)
    retention_batch: int = 500  # documents deleted per batch
    retention_pause: float = 0.05  # seconds between two batches, left to live traffic
    export_keep: float = 7 * 24 * 3600.0  # seconds a built export stays downloadable
    export_font: str | None = None  # a TrueType font for the PDF (DejaVu Sans if found)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    mongodb_url: str | None = None
    mongodb_db: str = "hub"
    redis_url: str | None = None
    data_dir: Path = Path(".hub-data")
    embedded: bool = True
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_private_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    oidc_issuers: tuple[OidcIssuer, ...] = ()  # identity providers with published keys
    jwks_timeout: float = 5.0  # seconds for one fetch of a provider's keys
    jwks_refetch_after: float = 60.0  # at most one fetch per provider in this many seconds
    # Sessions: a socket ends at its token's exp plus the grace; ``session:expiring`` is
    # sent this many seconds before exp; the console signs out after this idle time.
    session_grace: float = 30.0
    session_warning: float = 60.0
    console_idle: float = 900.0
    # FHIR appointment events: the identifier systems that hold the hub's user ids
    # (None: a participant's reference id, Patient/<id>).
    fhir_patient_system: str | None = None
    fhir_practitioner_system: str | None = None
    webhook_timeout: float = 10.0  # seconds for one delivery of a webhook
    webhook_first_retry: float = 5.0  # seconds to the first retry; each next one 4x longer
    webhook_give_up_after: float = 86400.0  # a delivery still failing after this is dead
    webhook_secret_overlap: float = 86400.0  # a replaced secret still signs this long
    cors_origins: tuple[str, ...] = ()
    max_body_chars: int = 4000
    max_frame_bytes: int = 65536
    # What may wait to be written to one socket whose client does not read; past
    # either bound the socket is dropped (the device catches up with `sync`).
    socket_queue_packets: int = 2000
    socket_queue_bytes: int = 4 * 1024 * 1024
    rate_conn: RateLimit = field(default_factory=lambda: RateLimit(20.0, 40.0))
    rate_user: RateLimit = field(default_factory=lambda: RateLimit(40.0, 80.0))
    presence_ttl: float = 60.0
    mongo_timeout: float = 5.0
    redis_timeout: float = 5.0
    log_level: str = "INFO"
    event_loop: str = "uvloop"  # or "asyncio", the standard library's
    log_format: str = "json"  # or "text", for a person reading a terminal
    shutdown_timeout: float = 10.0  # seconds from SIGTERM to exit
    # Connections the kernel completes before the hub accepts them (capped by Linux at
    # net.core.somaxconn). aiohttp's 128 overflowed when thousands of devices reconnect
    # at once: their SYNs were dropped and retried a second or more later.
    listen_backlog: int = 1024
    worker_metrics_port: int = 9108  # the worker's /metrics (0: none)
    # A `tenant` label per clinic on the worker's outbox gauges; else one series, "all".
    metrics_per_clinic: bool = False
    stream_claim_after: float = 30.0
    public_url: str | None = None
    celery_broker_url: str | None = None
    celery_visibility_timeout: float = 3600.0
    worker_concurrency: int = 2
    sms: SmsSettings = field(default_factory=SmsSettings)
    assistant: AssistantSettings = field(default_factory=AssistantSettings)
    attachments: AttachmentSettings = field(default_factory=AttachmentSettings)
    push: PushSettings = field(default_factory=PushSettings)
    record: RecordSettings = field(default_factory=RecordSettings)
    # The automatic reply to a patient writing while the clinic is closed.
    closed_reply: str = (
        "We are closed until {until}. We answer within {response_time}. "
        "If this is an emergency, call 911."
    )
    # The notice to a patient whose message has an urgent phrase, and the phrases.
    urgent_reply: str = (
        "If this is an emergency, call 911 now. We have alerted the clinic's on-call team."
    )
    urgent_phrases_file: str | None = None
    # The clinics this hub serves besides `default`, with their own settings.
    tenants: tuple[Tenant, ...] = ()

    @property
    def tenant_ids(self) -> tuple[str, ...]:
        """Every clinic this hub serves: ``default``, the ones of ``HUB_TENANTS`` and
        the ones its identity providers name, each once, in that order."""
        named = [DEFAULT_TENANT, *(t.tenant_id for t in self.tenants)]
        for issuer in self.oidc_issuers:
            named += [issuer.tenant, *issuer.tenants]
        return tuple(dict.fromkeys(named))

    def for_tenant(self, tenant_id: str) -> Settings:
        """These settings as clinic ``tenant_id`` of ``HUB_TENANTS`` sees them (the
        hub's own for a clinic without settings there). ValueError for a clinic this
        hub was not configured with; a clinic created through the operator API has its
        settings in the platform's database (``with_clinic``)."""
        if tenant_id not in self.tenant_ids:
            raise ValueError(f"no tenant {tenant_id!r} on this hub")
        own = next((t for t in self.tenants if t.tenant_id == tenant_id), None)
        return self if own is None else self.with_clinic(own)

    def with_clinic(self, own: Tenant) -> Settings:
        """These settings as clinic ``own`` sees them: its name, SMS sender and cap, and
        its EHR's identifier systems in place of the hub's."""
        sms = self.sms
        sender_given = own.twilio_from_number or own.twilio_messaging_service_sid
        return replace(
            self,
            fhir_patient_system=own.fhir_patient_system or self.fhir_patient_system,
            fhir_practitioner_system=own.fhir_practitioner_system or self.fhir_practitioner_system,
            sms=replace(
                sms,
                clinic_name=own.clinic_name or sms.clinic_name,
                daily_cap=own.sms_daily_cap or sms.daily_cap,
                twilio_from_number=own.twilio_from_number
                if sender_given
                else sms.twilio_from_number,
                twilio_messaging_service_sid=own.twilio_messaging_service_sid
                if sender_given
                else sms.twilio_messaging_service_sid,
            ),
        )

    @property
    def public_base_url(self) -> str:
        """Where Twilio reaches this hub (webhooks are signed against this URL)."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def redis_cluster(self) -> bool:
        """HUB_REDIS_URL names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
        return self.redis_url is not None and "+cluster://" in self.redis_url

    @property
    def broker_url(self) -> str:
        url = self.celery_broker_url or self.redis_url
        if url is None:
            raise ConfigError("no Celery broker: set HUB_CELERY_BROKER_URL or HUB_REDIS_URL")
        return url

    @property
    def jwt_verify_key(self) -> str:
        key = self.jwt_secret or self.jwt_public_key
        if key is None:  # from_env guarantees one of them outside embedded mode
            raise ConfigError("no JWT key: set HUB_JWT_SECRET or HUB_JWT_PUBLIC_KEY")
        return key

    @property
    def jwt_signing_key(self) -> str:
        if self.jwt_secret:
            return self.jwt_secret
        if self.jwt_private_key:
            return self.jwt_private_key
        raise ConfigError(
            "signing tokens needs HUB_JWT_SECRET or HUB_JWT_PRIVATE_KEY "
            "(HUB_JWT_PUBLIC_KEY only verifies)"
        )

    @property
    def attachment_url_key(self) -> bytes | None:
        """The key of signed download links: HUB_ATTACHMENT_URL_KEY, or one derived from
        HUB_JWT_SECRET (so that every hub of a deployment has the same); None with a
        public JWT key and no HUB_ATTACHMENT_URL_KEY (no signed links then)."""
        if self.attachments.url_key:
            return self.attachments.url_key.encode()
        if self.jwt_secret:
            return hmac.digest(self.jwt_secret.encode(), b"hub attachment links", "sha256")
        return None

    @property
    def vapid_subject(self) -> str:
        """Who push services contact about this hub's pushes: HUB_VAPID_SUBJECT, else
        HUB_PUBLIC_URL when it is https, else a placeholder address."""
        if self.push.vapid_subject:
            return self.push.vapid_subject
        if self.public_base_url.startswith("https://"):
            return self.public_base_url
        return "mailto:push@clinic.invalid"

    @property
    def embedded_mongodb(self) -> bool:
        return self.mongodb_url is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @classmethod
    def variables(cls) -> frozenset[str]:
        """Every environment variable the hub reads (what ``from_env`` asks for)."""
        recorder = _Recorder()
        cls.from_env(recorder)
        return frozenset(recorder.asked)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every ``HUB_*`` variable; raise ConfigError naming the bad one."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        defaults, assistant_defaults = cls(), AssistantSettings()
        embedded = reader.get("HUB_EMBEDDED", _boolean, True)
        settings = cls(
            host=reader.get("HUB_HOST", str, defaults.host),
            port=reader.get("HUB_PORT", _port, defaults.port),
            mongodb_url=reader.get("HUB_MONGODB_URL", _url("mongodb", "mongodb+srv"), None),
            mongodb_db=reader.get("HUB_MONGODB_DB", _db_name, defaults.mongodb_db),
            redis_url=reader.get(
                "HUB_REDIS_URL",
                _url("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"),
                None,
            ),
            data_dir=reader.get("HUB_DATA_DIR", Path, defaults.data_dir),
            embedded=embedded,
            jwt_secret=reader.get("HUB_JWT_SECRET", _secret, None),
            jwt_public_key=reader.get("HUB_JWT_PUBLIC_KEY", _pem, None),
            jwt_private_key=reader.get("HUB_JWT_PRIVATE_KEY", _pem, None),
            jwt_audience=reader.get("HUB_JWT_AUDIENCE", str, None),
            jwt_issuer=reader.get("HUB_JWT_ISSUER", str, None),
            cors_origins=reader.get("HUB_CORS_ORIGINS", _csv, ()),
            max_body_chars=reader.get("HUB_MAX_BODY_CHARS", _positive_int, defaults.max_body_chars),
            max_frame_bytes=reader.get(
                "HUB_MAX_FRAME_BYTES", _positive_int, defaults.max_frame_bytes
            ),
            socket_queue_packets=reader.get(
                "HUB_SOCKET_QUEUE_PACKETS", _positive_int, defaults.socket_queue_packets
            ),
            socket_queue_bytes=reader.get(
                "HUB_SOCKET_QUEUE_BYTES", _positive_int, defaults.socket_queue_bytes
            ),
            rate_conn=RateLimit(
                reader.get("HUB_RATE_CONN_PER_SEC", _positive_float, defaults.rate_conn.rate),
                reader.get("HUB_RATE_CONN_BURST", _positive_float, defaults.rate_conn.burst),
            ),
            rate_user=RateLimit(
                reader.get("HUB_RATE_USER_PER_SEC", _positive_float, defaults.rate_user.rate),
                reader.get("HUB_RATE_USER_BURST", _positive_float, defaults.rate_user.burst),
            ),
            presence_ttl=reader.get("HUB_PRESENCE_TTL", _positive_float, defaults.presence_ttl),
            mongo_timeout=reader.get(
                "HUB_MONGODB_TIMEOUT", _positive_float, defaults.mongo_timeout
            ),
            redis_timeout=reader.get("HUB_REDIS_TIMEOUT", _positive_float, defaults.redis_timeout),
            log_level=reader.get("HUB_LOG_LEVEL", _log_level, defaults.log_level),
            event_loop=reader.get("HUB_EVENT_LOOP", _event_loop, defaults.event_loop),
            # A person at a terminal in development, a log collector in production.
            log_format=reader.get("HUB_LOG_FORMAT", _log_format, "text" if embedded else "json"),
            shutdown_timeout=reader.get(
                "HUB_SHUTDOWN_TIMEOUT", _positive_float, defaults.shutdown_timeout
            ),
            listen_backlog=reader.get("HUB_LISTEN_BACKLOG", _positive_int, defaults.listen_backlog),
            metrics_per_clinic=reader.get("HUB_METRICS_PER_CLINIC", _boolean, False),
            worker_metrics_port=reader.get(
                "HUB_WORKER_METRICS_PORT", _port, defaults.worker_metrics_port
            ),
            stream_claim_after=reader.get(
                "HUB_STREAM_CLAIM_AFTER", _positive_float, defaults.stream_claim_after
            ),
            public_url=reader.get("HUB_PUBLIC_URL", _url("http", "https"), None),
            celery_broker_url=reader.get(
                "HUB_CELERY_BROKER_URL", _url("redis", "rediss", "unix"), None
            ),
            celery_visibility_timeout=reader.get(
                "HUB_CELERY_VISIBILITY_TIMEOUT", _positive_float, defaults.celery_visibility_timeout
            ),
            worker_concurrency=reader.get(
                "HUB_WORKER_CONCURRENCY", _positive_int, defaults.worker_concurrency
            ),
            sms=_sms_settings(reader),
            assistant=AssistantSettings(
                ollama_host=reader.get(
                    "HUB_OLLAMA_HOST", _url("http", "https"), assistant_defaults.ollama_host
                ).rstrip("/"),
                model=reader.get("HUB_OLLAMA_MODEL", str, assistant_defaults.model),
                timeout=reader.get(
                    "HUB_OLLAMA_TIMEOUT", _positive_float, assistant_defaults.timeout
                ),
                num_ctx=reader.get("HUB_OLLAMA_NUM_CTX", _positive_int, assistant_defaults.num_ctx),
                num_predict=reader.get(
                    "HUB_OLLAMA_NUM_PREDICT", _positive_int, assistant_defaults.num_predict
                ),
                concurrency=reader.get(
                    "HUB_OLLAMA_CONCURRENCY", _positive_int, assistant_defaults.concurrency
                ),
                queue_wait=reader.get(
                    "HUB_OLLAMA_QUEUE_WAIT", _positive_float, assistant_defaults.queue_wait
                ),
                every_segments=reader.get(
                    "HUB_ASSISTANT_EVERY_SEGMENTS", _positive_int, assistant_defaults.every_segments
                ),
                every_seconds=reader.get(
                    "HUB_ASSISTANT_EVERY_SECONDS", _positive_float, assistant_defaults.every_seconds
                ),
                stream_interval=reader.get(
                    "HUB_ASSISTANT_STREAM_INTERVAL",
                    _positive_float,
                    assistant_defaults.stream_interval,
                ),
                cached_consultations=reader.get(
                    "HUB_ASSISTANT_CACHE",
                    _non_negative_int,
                    assistant_defaults.cached_consultations,
                ),
            ),
        )
        settings = replace(
            settings,
            jwt_algorithms=_algorithms(env, settings),
            attachments=_attachment_settings(reader),
            push=_push_settings(reader),
            record=_record_settings(reader),
            closed_reply=reader.get("HUB_CLOSED_REPLY", _closed_reply, defaults.closed_reply),
            urgent_reply=reader.get("HUB_URGENT_REPLY", _urgent_reply, defaults.urgent_reply),
            urgent_phrases_file=reader.get("HUB_URGENT_PHRASES_FILE", _phrases_file, None),
            jwks_timeout=reader.get("HUB_JWKS_TIMEOUT", _positive_float, defaults.jwks_timeout),
            fhir_patient_system=reader.get("HUB_FHIR_PATIENT_SYSTEM", str, None),
            webhook_timeout=reader.get(
                "HUB_WEBHOOK_TIMEOUT", _positive_float, defaults.webhook_timeout
            ),
            webhook_first_retry=reader.get(
                "HUB_WEBHOOK_FIRST_RETRY", _positive_float, defaults.webhook_first_retry
            ),
            webhook_secret_overlap=reader.get(
                "HUB_WEBHOOK_SECRET_OVERLAP", _non_negative_float, defaults.webhook_secret_overlap
            ),
            webhook_give_up_after=reader.get(
                "HUB_WEBHOOK_GIVE_UP_AFTER", _positive_float, defaults.webhook_give_up_after
            ),
            fhir_practitioner_system=reader.get("HUB_FHIR_PRACTITIONER_SYSTEM", str, None),
            jwks_refetch_after=reader.get(
                "HUB_JWKS_REFETCH_AFTER", _non_negative_float, defaults.jwks_refetch_after
            ),
            session_grace=reader.get(
                "HUB_SESSION_GRACE", _non_negative_float, defaults.session_grace
            ),
            session_warning=reader.get(
                "HUB_SESSION_WARNING", _positive_float, defaults.session_warning
            ),
            console_idle=reader.get("HUB_CONSOLE_IDLE", _positive_float, defaults.console_idle),
        )
        settings = replace(
            settings,
            oidc_issuers=_oidc_issuers(reader, settings),
            tenants=reader.get("HUB_TENANTS", parse_tenants, ()),
        )
        _check_tenant_templates(settings)
        if settings.jwt_secret and settings.jwt_public_key:
            raise ConfigError("set only one of HUB_JWT_SECRET and HUB_JWT_PUBLIC_KEY")
        if settings.assistant.num_predict * 2 > settings.assistant.num_ctx:
            raise ConfigError(
                "HUB_OLLAMA_NUM_PREDICT must leave at least half of "
                "HUB_OLLAMA_NUM_CTX to the prompt"
            )
        if settings.redis_cluster and settings.celery_broker_url is None:
            # Celery's Redis transport speaks to one node (docs/operations.md).
            raise ConfigError("a cluster HUB_REDIS_URL needs HUB_CELERY_BROKER_URL (a single node)")
        if settings.max_frame_bytes < settings.max_body_chars * 4 + 1024:
            raise ConfigError(
                "HUB_MAX_FRAME_BYTES must hold a full message: at least "
                "4 * HUB_MAX_BODY_CHARS + 1024 bytes"
            )
        if not embedded:
            missing = [
                name
                for name, value in (
                    ("HUB_MONGODB_URL", settings.mongodb_url),
                    ("HUB_REDIS_URL", settings.redis_url),
                )
                if value is None
            ]
            if missing:
                raise ConfigError(f"HUB_EMBEDDED=0 needs {' and '.join(missing)}")
            if not (settings.jwt_secret or settings.jwt_public_key or settings.oidc_issuers):
                raise ConfigError(
                    "HUB_EMBEDDED=0 needs HUB_JWT_SECRET, HUB_JWT_PUBLIC_KEY, "
                    "HUB_JWT_JWKS_URL or HUB_OIDC_ISSUERS"
                )
        return settings

    def with_embedded_jwt_secret(self) -> Settings:
        """In embedded mode without a configured key, use the one kept in the data dir.

        The key is generated on first use and stored with mode 0600 so that tokens
        printed by ``hub token`` stay valid across restarts of the development hub.
        """
        if self.jwt_secret or self.jwt_public_key or self.oidc_issuers or not self.embedded:
            return self
        path = self.data_dir / JWT_SECRET_FILE
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
        return replace(self, jwt_secret=path.read_text().strip(), jwt_algorithms=("HS256",))


def _oidc_issuers(reader: _Reader, settings: Settings) -> tuple[OidcIssuer, ...]:
    """``HUB_OIDC_ISSUERS`` (a JSON list of issuers), or one issuer made of
    ``HUB_JWT_JWKS_URL`` with ``HUB_JWT_ISSUER`` and ``HUB_JWT_AUDIENCE``."""
    none: tuple[OidcIssuer, ...] = ()
    listed = reader.get("HUB_OIDC_ISSUERS", _issuer_list, none)
    jwks_url = reader.get("HUB_JWT_JWKS_URL", _url("http", "https"), None)
    if jwks_url is None:
        return listed
    if listed:
        raise ConfigError("set HUB_OIDC_ISSUERS or HUB_JWT_JWKS_URL, not both")
    if settings.jwt_issuer is None:
        raise ConfigError("HUB_JWT_JWKS_URL needs HUB_JWT_ISSUER (the iss of its tokens)")
    return (OidcIssuer(settings.jwt_issuer, jwks_url, settings.jwt_audience),)


def _issuer_list(raw: str) -> tuple[OidcIssuer, ...]:
    try:
        items = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError("not JSON: expected a list of issuers") from None
    if not isinstance(items, list) or not items:
        raise ValueError("expected a non-empty JSON list of issuers")
    issuers = []
    for n, item in enumerate(items):
        try:
            issuers.append(parse_issuer(item))
        except ValueError as exc:
            raise ValueError(f"issuer {n}: {exc}") from None
    if len({i.issuer for i in issuers}) != len(issuers):
        raise ValueError("each issuer once")
    for n, issuer in enumerate(issuers):
        if issuer.tenant_claim is not None and not issuer.tenants:
            raise ValueError(f"issuer {n}: tenant_claim needs the list of its `tenants`")
    return tuple(issuers)


def _check_tenant_templates(settings: Settings) -> None:
    """Every clinic's SMS texts fit with its own name in place."""
    for tenant in settings.tenants:
        sms = settings.for_tenant(tenant.tenant_id).sms
        for kind in KINDS:
            try:
                check_template(kind, sms.templates.get(kind), sms.clinic_name)
            except ValueError as exc:
                raise ConfigError(
                    f"HUB_TENANTS: {tenant.tenant_id}'s clinic_name with "
                    f"HUB_SMS_TEMPLATE_{kind.upper()}: {exc}"
                ) from exc


def _record_settings(reader: _Reader) -> RecordSettings:
    defaults = RecordSettings()
    every_kind = reader.get("HUB_RETENTION_DAYS", _positive_int, None)
    return RecordSettings(
        edit_window=reader.get("HUB_EDIT_WINDOW", _positive_float, defaults.edit_window),
        patient_retract_window=reader.get(
            "HUB_PATIENT_RETRACT_WINDOW", _positive_float, defaults.patient_retract_window
        ),
        retention_days={
            kind: reader.get(f"HUB_RETENTION_{kind.upper()}_DAYS", _positive_int, every_kind)
            for kind in RECORD_KINDS
        },
        retention_every=reader.get(
            "HUB_RETENTION_EVERY", _positive_float, defaults.retention_every
        ),
        retention_batch=reader.get("HUB_RETENTION_BATCH", _positive_int, defaults.retention_batch),
        retention_pause=reader.get(
            "HUB_RETENTION_PAUSE", _non_negative_float, defaults.retention_pause
        ),
        export_keep=reader.get("HUB_EXPORT_KEEP", _positive_float, defaults.export_keep),
        export_font=reader.get("HUB_EXPORT_FONT", _readable_file, None),
    )


def _push_settings(reader: _Reader) -> PushSettings:
    defaults = PushSettings()
    private_key = reader.get("HUB_VAPID_PRIVATE_KEY", _vapid_key, None)
    return PushSettings(
        vapid_private_key=private_key,
        vapid_public_key=vapid_public_key(private_key) if private_key else None,
        vapid_subject=reader.get("HUB_VAPID_SUBJECT", _vapid_subject, None),
        fcm_credentials=reader.get("HUB_FCM_CREDENTIALS", _readable_file, None),
        fcm_base_url=reader.get(
            "HUB_FCM_BASE_URL", _url("http", "https"), defaults.fcm_base_url
        ).rstrip("/"),
        timeout=reader.get("HUB_PUSH_TIMEOUT", _positive_float, defaults.timeout),
        sms_after_push=reader.get("HUB_SMS_AFTER_PUSH", _positive_float, defaults.sms_after_push),
        ttl=reader.get("HUB_PUSH_TTL", _positive_int, defaults.ttl),
        unchecked_origins=reader.get("HUB_PUSH_UNCHECKED_ORIGINS", _origins, ()),
        device_max_age=reader.get(
            "HUB_PUSH_DEVICE_MAX_AGE_DAYS", _positive_float, defaults.device_max_age / 86400
        )
        * 86400,
    )


def _origins(raw: str) -> tuple[str, ...]:
    """Comma-separated ``scheme://host[:port]`` origins."""
    origins = tuple(o.strip().rstrip("/").lower() for o in raw.split(",") if o.strip())
    for origin in origins:
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https") or not rest or "/" in rest:
            raise ValueError(f"expected origins such as http://127.0.0.1:8123, got {origin!r}")
    return origins


def _vapid_key(raw: str) -> str:
    from py_vapid import Vapid

    try:
        Vapid.from_string(raw.strip())
    except Exception:
        raise ValueError(
            "not a VAPID private key: run `python -m hub push keys` to make one"
        ) from None
    return raw.strip()


def vapid_public_key(private_key: str) -> str:
    """The application server key of a VAPID private key: the uncompressed P-256 point,
    base64url without padding, as ``pushManager.subscribe`` takes it."""
    from cryptography.hazmat.primitives import serialization
    from py_vapid import Vapid
    from py_vapid.utils import b64urlencode

    public = Vapid.from_string(private_key).public_key
    assert public is not None
    point = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return str(b64urlencode(point))


def vapid_key_pair() -> tuple[str, str]:
    """A new VAPID key pair: (private, public), both base64url."""
    from py_vapid import Vapid
    from py_vapid.utils import b64urlencode

    vapid = Vapid()
    vapid.generate_keys()
    assert vapid.private_key is not None
    raw = vapid.private_key.private_numbers().private_value.to_bytes(32, "big")
    private = str(b64urlencode(raw))
    return private, vapid_public_key(private)


def _closed_reply(raw: str) -> str:
    used = {name for _, name, _, _ in string.Formatter().parse(raw) if name is not None}
    if used - {"until", "response_time"} or not raw.strip() or len(raw) > 500:
        raise ValueError("at most 500 characters, with only {until} and {response_time}")
    return raw


def _urgent_reply(raw: str) -> str:
    if not raw.strip() or len(raw) > 500 or "{" in raw:
        raise ValueError("plain text of at most 500 characters")
    return raw


def _phrases_file(raw: str) -> str:
    from hub.core.urgent import UrgentPhrases

    UrgentPhrases.from_file(_readable_file(raw))  # ValueError naming what is wrong
    return raw


def _vapid_subject(raw: str) -> str:
    if not raw.startswith(("mailto:", "https://")):
        raise ValueError("expected mailto:someone@clinic.example or an https:// URL")
    return raw


def _readable_file(raw: str) -> str:
    if not Path(raw).is_file():
        raise ValueError(f"no such file: {raw}")
    return raw


def _attachment_settings(reader: _Reader) -> AttachmentSettings:
    defaults = AttachmentSettings()
    kinds = reader.get("HUB_ATTACHMENT_TYPES", _kinds, defaults.kinds)
    return AttachmentSettings(
        max_bytes=reader.get("HUB_ATTACHMENT_MAX_BYTES", _positive_int, defaults.max_bytes),
        daily_bytes=reader.get("HUB_ATTACHMENT_DAILY_BYTES", _positive_int, defaults.daily_bytes),
        per_message=reader.get("HUB_ATTACHMENTS_PER_MESSAGE", _positive_int, defaults.per_message),
        kinds=kinds,
        clamd_url=reader.get("HUB_CLAMD_URL", _url("tcp", "unix"), None),
        clamd_timeout=reader.get("HUB_CLAMD_TIMEOUT", _positive_float, defaults.clamd_timeout),
        unscanned=reader.get("HUB_ATTACHMENTS_UNSCANNED", _boolean, defaults.unscanned),
        max_pixels=reader.get("HUB_IMAGE_MAX_PIXELS", _pixels, defaults.max_pixels),
        process_timeout=reader.get("HUB_IMAGE_TIMEOUT", _positive_float, defaults.process_timeout),
        retry_after=reader.get("HUB_ATTACHMENT_RETRY_AFTER", _positive_float, defaults.retry_after),
        url_ttl=reader.get("HUB_ATTACHMENT_URL_TTL", _positive_float, defaults.url_ttl),
        url_key=reader.get("HUB_ATTACHMENT_URL_KEY", _secret, None),
        orphan_after=reader.get(
            "HUB_ATTACHMENT_ORPHAN_AFTER", _positive_float, defaults.orphan_after
        ),
    )


def _kinds(raw: str) -> tuple[str, ...]:
    kinds = _csv(raw.lower())
    unknown = sorted(set(kinds) - set(ATTACHMENT_KINDS))
    if unknown or not kinds:
        raise ValueError(f"expected some of {', '.join(ATTACHMENT_KINDS)}")
    return kinds


def _pixels(raw: str) -> int:
    value = _positive_int(raw)
    if value > 89_000_000:  # Pillow's own limit, past which it refuses to open
        raise ValueError("at most 89000000 (Pillow's own limit)")
    return value


def _sms_settings(reader: _Reader) -> SmsSettings:
    defaults = SmsSettings()
    clinic_name = reader.get("HUB_CLINIC_NAME", str, defaults.clinic_name)
    templates = {}
    for kind in KINDS:
        name = f"HUB_SMS_TEMPLATE_{kind.upper()}"
        template = reader.get(name, str, None)
        if template is not None:
            templates[kind] = template
    sms = SmsSettings(
        fallback_after=reader.get(
            "HUB_SMS_FALLBACK_AFTER", _positive_float, defaults.fallback_after
        ),
        coalesce=reader.get("HUB_SMS_COALESCE", _positive_float, defaults.coalesce),
        daily_cap=reader.get("HUB_SMS_DAILY_CAP", _positive_int, defaults.daily_cap),
        quiet_hours=reader.get("HUB_SMS_QUIET_HOURS", _quiet_hours, defaults.quiet_hours),
        clinic_name=clinic_name,
        templates=templates,
        twilio_account_sid=reader.get("TWILIO_ACCOUNT_SID", str, None),
        twilio_auth_token=reader.get("TWILIO_AUTH_TOKEN", str, None),
        twilio_from_number=reader.get("TWILIO_FROM_NUMBER", check_e164, None),
        twilio_messaging_service_sid=reader.get("TWILIO_MESSAGING_SERVICE_SID", str, None),
        twilio_base_url=reader.get(
            "HUB_TWILIO_BASE_URL", _url("http", "https"), defaults.twilio_base_url
        ).rstrip("/"),
        twilio_timeout=reader.get("HUB_TWILIO_TIMEOUT", _positive_float, defaults.twilio_timeout),
        retry_base=reader.get("HUB_SMS_RETRY_BASE", _positive_float, defaults.retry_base),
        sweep_after=reader.get("HUB_SMS_SWEEP_AFTER", _positive_float, defaults.sweep_after),
    )
    if sms.driver == "twilio" and not (sms.twilio_from_number or sms.twilio_messaging_service_sid):
        raise ConfigError(
            "Twilio credentials are set: also set TWILIO_FROM_NUMBER or "
            "TWILIO_MESSAGING_SERVICE_SID"
        )
    # Checked with the clinic name in place, so a long name is caught too.
    for kind in KINDS:
        try:
            check_template(kind, sms.templates.get(kind), clinic_name)
        except ValueError as exc:
            raise ConfigError(
                f"HUB_SMS_TEMPLATE_{kind.upper()} (with HUB_CLINIC_NAME): {exc}"
            ) from exc
    return sms


def _quiet_hours(raw: str) -> tuple[int, int]:
    """``HH:MM-HH:MM`` in the recipient's time zone; may cross midnight."""
    try:
        start, end = (part.strip() for part in raw.split("-"))
        minutes = []
        for part in (start, end):
            hours, mins = part.split(":")
            value = int(hours) * 60 + int(mins)
            if not (0 <= int(hours) < 24 and 0 <= int(mins) < 60):
                raise ValueError
            minutes.append(value)
    except ValueError:
        raise ValueError(f"expected HH:MM-HH:MM, got {raw!r}") from None
    return minutes[0], minutes[1]


class _Recorder(Mapping[str, str]):
    """An empty environment that remembers which names were looked up."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.asked.add(name)
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{name}: {exc}") from exc


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {raw!r}")


def _number(raw: str, kind: type[T], wanted: str) -> T:
    """``raw`` as an int or float; Python's own message ("invalid literal for int()")
    would not tell an operator what the variable takes."""
    try:
        return kind(raw)  # type: ignore[call-arg]
    except ValueError:
        raise ValueError(f"must be {wanted}, got {raw!r}") from None


def _port(raw: str) -> int:
    port = _number(raw, int, "a port number (0-65535)")
    if not 0 <= port <= 65535:
        raise ValueError(f"must be a port number (0-65535), got {port}")
    return port


def _positive_int(raw: str) -> int:
    value = _number(raw, int, "a positive integer")
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(raw: str) -> int:
    value = _number(raw, int, "zero or a positive integer")
    if value < 0:
        raise ValueError(f"must be zero or more, got {value}")
    return value


def _positive_float(raw: str) -> float:
    value = _number(raw, float, "a positive number")
    if not value > 0:
        raise ValueError(f"must be a positive number, got {raw}")
    return value


def _non_negative_float(raw: str) -> float:
    value = _number(raw, float, "zero or a positive number")
    if value < 0:
        raise ValueError(f"must be zero or more, got {raw}")
    return value


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        scheme = urlsplit(raw).scheme
        if scheme not in schemes:
            prefixes = " or ".join(s + "://" for s in schemes)
            raise ValueError(f"expected a URL starting with {prefixes}")
        return raw

    return parse


def _db_name(raw: str) -> str:
    if any(ch in raw for ch in '/\\. "$') or len(raw) > 63:
        raise ValueError(f"not a valid MongoDB database name: {raw!r}")
    return raw


def _secret(raw: str) -> str:
    if len(raw) < 32:
        raise ValueError("an HS256 secret must be at least 32 characters")
    return raw


def _pem(raw: str) -> str:
    text = raw.replace("\\n", "\n")
    if "-----BEGIN" not in text:
        raise ValueError("expected a PEM key (-----BEGIN ...)")
    return text


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


def _log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"json", "text"}:
        raise ValueError("expected json or text")
    return value


def _event_loop(raw: str) -> str:
    loop = raw.strip().lower()
    if loop not in {"uvloop", "asyncio"}:
        raise ValueError("expected uvloop or asyncio")
    return loop


def _algorithms(env: Mapping[str, str], settings: Settings) -> tuple[str, ...]:
    """Pin the accepted algorithms to the kind of key: no `none`, no HS/RS confusion,
    and with a public key only the algorithms of that key's own kind (an RSA key
    accepts no ES256 token)."""
    raw = env.get("HUB_JWT_ALGORITHMS", "").strip()
    if settings.jwt_public_key:
        kind, allowed = _public_key_kind(settings.jwt_public_key)
        algorithms = _csv(raw) if raw else (allowed[0],)
        what = f"an {kind} HUB_JWT_PUBLIC_KEY"
    else:
        allowed = tuple(sorted(HMAC_ALGORITHMS))
        algorithms = _csv(raw) if raw else ("HS256",)
        what = "HUB_JWT_SECRET"
    bad = [name for name in algorithms if name not in allowed]
    if bad:
        raise ConfigError(
            f"HUB_JWT_ALGORITHMS: {', '.join(bad)} cannot be used with {what} "
            f"(allowed: {', '.join(allowed)})"
        )
    return algorithms


def _public_key_kind(pem: str) -> tuple[str, tuple[str, ...]]:
    """The kind of a PEM public key and the algorithms it verifies, the default first."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        raise ConfigError("HUB_JWT_PUBLIC_KEY: not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
    if isinstance(key, ec.EllipticCurvePublicKey):
        curves = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name not in curves:
            raise ConfigError(
                f"HUB_JWT_PUBLIC_KEY: curve {key.curve.name} is not supported "
                "(P-256, P-384 or P-521)"
            )
        return "EC", (curves[key.curve.name],)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "EdDSA", ("EdDSA",)
    raise ConfigError("HUB_JWT_PUBLIC_KEY: not an RSA, EC or Ed25519/Ed448 key")
