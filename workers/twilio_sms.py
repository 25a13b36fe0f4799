"""SMS drivers: Twilio through the official ``twilio`` library, or the log.

Errors are translated here into :class:`SmsFailed`, which says whether trying again
can help: network errors, 429 and 5xx can; other 4xx cannot. The caller owns the
retry schedule (Celery's), so the library's own retries stay off.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from hub.core.errors import SmsFailed
from hub.core.phone import mask
from hub.core.settings import SmsSettings

log = logging.getLogger("hub.sms")
TWILIO_API = "https://api.twilio.com"
UNSUBSCRIBED = 21610  # the recipient replied STOP to this sender
INVALID_NUMBER = 21211


@dataclass(frozen=True, slots=True)
class Sent:
    sid: str
    status: str


class SmsDriver(Protocol):
    name: str

    def send(self, to: str, body: str, status_callback: str) -> Sent: ...

    def find(self, to: str, body: str, since: datetime) -> Sent | None: ...


class _BaseUrlHttpClient(TwilioHttpClient):
    """Twilio's HTTP client, sending to ``base_url`` instead of Twilio's API host."""

    def __init__(self, base_url: str, timeout: float) -> None:
        quiet = logging.getLogger("hub.sms.twilio_http")
        quiet.setLevel(logging.WARNING)  # its INFO lines carry request parameters
        super().__init__(timeout=timeout, logger=quiet)
        self._base_url = base_url

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if url.startswith(TWILIO_API):
            url = self._base_url + url[len(TWILIO_API) :]
        return super().request(method, url, *args, **kwargs)


class TwilioDriver:
    name = "twilio"

    def __init__(self, settings: SmsSettings) -> None:
        http = _BaseUrlHttpClient(settings.twilio_base_url, settings.twilio_timeout)
        self._client = Client(
            settings.twilio_account_sid, settings.twilio_auth_token, http_client=http
        )
        self._sender: dict[str, str] = (
            {"messaging_service_sid": settings.twilio_messaging_service_sid}
            if settings.twilio_messaging_service_sid
            else {"from_": settings.twilio_from_number or ""}
        )

    def send(self, to: str, body: str, status_callback: str) -> Sent:
        try:
            message = self._client.messages.create(
                to=to, body=body, status_callback=status_callback, **self._sender
            )
        except TwilioRestException as exc:
            raise _translate(exc) from exc
        except requests.RequestException as exc:
            raise SmsFailed(f"network: {type(exc).__name__}", retryable=True) from exc
        return Sent(message.sid or "", message.status or "queued")

    def find(self, to: str, body: str, since: datetime) -> Sent | None:
        """A message to ``to`` with this body created since ``since``, if Twilio has one."""
        try:
            messages = self._client.messages.list(to=to, date_sent_after=since, limit=20)
        except TwilioRestException as exc:
            raise _translate(exc) from exc
        except requests.RequestException as exc:
            raise SmsFailed(f"network: {type(exc).__name__}", retryable=True) from exc
        for message in messages:
            if message.body == body:
                return Sent(message.sid or "", message.status or "sent")
        return None


class LogDriver:
    """No Twilio credentials: the SMS is logged (masked number) and recorded, not sent."""

    name = "log"

    def send(self, to: str, body: str, status_callback: str) -> Sent:
        # Bodies come from fixed templates with no health information in them.
        log.info("sms not sent (log driver) to=%s body=%r", mask(to), body)
        return Sent(f"LOG{uuid.uuid4().hex}", "sent")

    def find(self, to: str, body: str, since: datetime) -> Sent | None:
        return None


def create_driver(settings: SmsSettings) -> SmsDriver:
    return TwilioDriver(settings) if settings.driver == "twilio" else LogDriver()


def _translate(exc: TwilioRestException) -> SmsFailed:
    status = int(exc.status or 0)
    retryable = status == 429 or status >= 500
    return SmsFailed(
        f"twilio {status} code {exc.code}", retryable=retryable, twilio_code=exc.code, status=status
    )
