"""The SMS stack of the tests: a worker process, the fake Twilio, a back-end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from twilio.request_validator import RequestValidator

from hub.core import clock
from hub.core.settings import Settings
from hub.server import embedded
from storage import names
from tests.support.fake_twilio import FakeTwilio
from tests.support.hubs import JWT_SECRET, TIMEOUT, HubFixture

ROOT = Path(__file__).resolve().parents[2]
START = clock.now().replace(microsecond=0) + timedelta(days=3)
CLINIC = "Riverside Clinic"
SMS_TIMEOUT = 20.0


def zone_where_hour(hours: range) -> str:
    """A fixed-offset zone whose local hour now is in ``hours`` (quiet or not)."""
    now = clock.now()
    for offset in range(-12, 15):
        name = f"Etc/GMT{'+' if offset <= 0 else '-'}{abs(offset)}"  # POSIX signs are inverted
        if now.astimezone(ZoneInfo(name)).hour in hours:
            return name
    raise AssertionError("no zone found")


DAYTIME = zone_where_hour(range(10, 18))
NIGHT = zone_where_hour(range(0, 6))


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes: a machine that dies mid-task."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(TIMEOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Stack:
    mongodb_url: str
    redis_url: str
    db_name: str
    twilio: FakeTwilio
    tmp: Path
    workers: list[Worker]
    overrides: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "HUB_EMBEDDED": "0",
            "HUB_JWT_SECRET": JWT_SECRET,
            "HUB_MONGODB_URL": self.mongodb_url,
            "HUB_MONGODB_DB": self.db_name,
            "HUB_REDIS_URL": self.redis_url,
            "HUB_CLINIC_NAME": CLINIC,
            "HUB_PUBLIC_URL": "https://hub.clinic.test",
            "TWILIO_ACCOUNT_SID": self.twilio.account_sid,
            "TWILIO_AUTH_TOKEN": self.twilio.auth_token,
            "TWILIO_FROM_NUMBER": "+14155550000",
            "HUB_TWILIO_BASE_URL": self.twilio.url,
            "HUB_TWILIO_TIMEOUT": "3",
            "HUB_SMS_RETRY_BASE": "0.2",
            "HUB_CELERY_VISIBILITY_TIMEOUT": "3",
            "HUB_LOG_LEVEL": "INFO",
        }
        return {**env, **self.overrides}

    def start_worker(self) -> Worker:
        log_path = self.tmp / f"worker-{len(self.workers)}.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "hub", "worker"],
                cwd=ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(process, log_path)
        self.workers.append(worker)
        return worker

    def hub_settings(self, settings: Settings) -> Settings:
        return replace(
            Settings.from_env(self.env()),
            host=settings.host,
            port=settings.port,
            data_dir=settings.data_dir,
            rate_conn=settings.rate_conn,
            rate_user=settings.rate_user,
            sms=replace(Settings.from_env(self.env()).sms, fallback_after=1.0),
        )


@asynccontextmanager
async def own_stack(
    mongodb_server: embedded.ChildServer, tmp: Path, settings: Settings, **overrides: str
) -> AsyncIterator[tuple[Stack, HubFixture]]:
    """A broker, fake Twilio and hub of the test's own (not started: the test says
    when), stopped with every worker the test started."""
    stack, redis = make_stack(mongodb_server, tmp)
    stack.overrides = overrides
    hub = HubFixture(stack.hub_settings(settings))
    try:
        yield stack, hub
    finally:
        await hub.close()
        for worker in stack.workers:
            worker.stop()
        stack.twilio.stop()
        redis.stop()


def make_stack(mongodb_server: embedded.ChildServer, tmp: Path) -> tuple[Stack, Any]:
    redis = embedded.start_redis(tmp / "redis")
    twilio = FakeTwilio().start()
    stack = Stack(mongodb_server.url, redis.url, f"sms_{uuid.uuid4().hex[:10]}", twilio, tmp, [])
    return stack, redis


async def until(check: Callable[[], Awaitable[Any]], timeout: float = SMS_TIMEOUT) -> Any:
    """Wait until ``check()`` returns something truthy; fail after ``timeout``."""

    async def poll() -> Any:
        while not (result := await check()):
            await asyncio.sleep(0.05)
        return result

    return await asyncio.wait_for(poll(), timeout)


class Backend:
    """What a clinic back-end does over HTTP: contacts and appointment events."""

    def __init__(self, hub: HubFixture, key: str) -> None:
        self.hub, self.key = hub, key
        self.url = str(hub.servers[0].make_url("/")).rstrip("/")

    async def put_contact(
        self,
        user_id: str,
        phone: str,
        timezone: str = DAYTIME,
        opt_in: bool = True,
        key: str | None = None,
    ) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.put(
                f"{self.url}/api/v1/users/{user_id}/contact",
                json={"phone": phone, "timezone": timezone, "sms_opt_in": opt_in},
                headers={"Authorization": f"Bearer {key or self.key}"},
            ) as response,
        ):
            return response.status, await response.json()

    async def appointment(
        self,
        patient_id: str,
        status: str = "scheduled",
        *,
        appointment_id: str | None = None,
        doctor_id: str = "dr-sms",
        minutes: int = 0,
        **extra: Any,
    ) -> str:
        appointment_id = appointment_id or f"apt-{uuid.uuid4().hex[:8]}"
        event = {
            "event_id": uuid.uuid4().hex,
            "appointment_id": appointment_id,
            "doctor_id": doctor_id,
            "patient_id": patient_id,
            "status": status,
            "start": START.isoformat(),
            "occurred_at": (
                datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=minutes)
            ).isoformat(),
            **extra,
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.url}/api/v1/events/appointments",
                json=event,
                headers={"Authorization": f"Bearer {self.key}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
        return f"{event['event_id']}:{patient_id}"

    async def twilio_post(
        self, path: str, form: dict[str, str], signature: str | None = None
    ) -> tuple[int, str]:
        """POST as Twilio does, signed against HUB_PUBLIC_URL unless told otherwise."""
        settings = self.hub.settings
        if signature is None:
            signature = RequestValidator(settings.sms.twilio_auth_token).compute_signature(
                settings.public_base_url + path, form
            )
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                self.url + path, data=form, headers={"X-Twilio-Signature": signature}
            ) as response,
        ):
            return response.status, await response.text()


def new_phone() -> str:
    return f"+1415{uuid.uuid4().int % 10**7:07d}"


async def outbox(mongo: Any, outbox_id: str, *states: str) -> dict[str, Any]:
    """The outbox row once it is in one of ``states``."""
    return await until(
        lambda: mongo[names.SMS_OUTBOX].find_one({"_id": outbox_id, "state": {"$in": list(states)}})
    )


async def worker_logged(worker: Worker, text: str) -> bool:
    return text in worker.log()


async def log_with(stack: Stack, text: str) -> str | None:
    log = "".join(worker.log() for worker in stack.workers)
    return log if text in log else None
