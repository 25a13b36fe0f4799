"""Push services: Web Push (VAPID, through pywebpush) and Firebase Cloud Messaging
HTTP v1 (OAuth through google-auth).

Errors are translated here into :class:`PushFailed`, which says whether the device is
gone for good (Web Push 404/410, FCM ``UNREGISTERED``: delete it), whether trying
again can help (network errors, 429, 5xx) or neither. The caller owns the retry
schedule (Celery's).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import google.auth.transport.requests
import requests
from google.oauth2 import service_account
from pywebpush import WebPushException, webpush

from hub.core.errors import BadRequest, HubError
from hub.core.push_endpoints import check_endpoint_now
from hub.core.settings import PushSettings

log = logging.getLogger("hub.push")

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class PushFailed(HubError):
    code = "push_failed"

    def __init__(self, message: str, *, retryable: bool, gone: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.gone = gone


@dataclass(frozen=True, slots=True)
class Push:
    """What a device is told: text and ids only (``hub.core.push_texts``)."""

    title: str
    body: str
    collapse_key: str  # one line per conversation or appointment on the device
    badge: int
    data: dict[str, str]  # the ids the app opens the right screen with

    def web_payload(self) -> str:
        return json.dumps(
            {
                "title": self.title,
                "body": self.body,
                "tag": self.collapse_key,
                "badge": self.badge,
                "data": self.data,
            },
            separators=(",", ":"),
        )


class PushService(Protocol):
    def send(self, device: dict[str, Any], push: Push) -> None: ...


def web_push_topic(collapse_key: str) -> str:
    """The Web Push ``Topic`` header of a collapse key: RFC 8030 section 5.4 allows at
    most 32 characters of the URL-safe base64 alphabet (Mozilla's service answers 400
    to anything else), so a hash of the key, not the key cut short (two ids that share
    their first 32 characters would replace each other's pushes)."""
    digest = hashlib.sha256(collapse_key.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:32]


class _NoRedirects(requests.Session):
    """A push service answers the push itself: a redirect is refused, never followed
    (it could point the worker at a host the endpoint check never saw)."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["allow_redirects"] = False
        return super().request(*args, **kwargs)


def _failed(status: int | None, what: str) -> PushFailed:
    if status is None or status == 429 or status >= 500:
        return PushFailed(f"{what}: {status or 'no answer'}", retryable=True)
    return PushFailed(f"{what}: {status}", retryable=False, gone=status in (404, 410))


class WebPushService:
    """RFC 8030 Web Push with VAPID (RFC 8292), payload encrypted as RFC 8291 says."""

    def __init__(self, settings: PushSettings, subject: str) -> None:
        assert settings.vapid_private_key is not None
        self._key = settings.vapid_private_key
        self._subject = subject
        self._timeout = settings.timeout
        self._ttl = settings.ttl
        self._unchecked = settings.unchecked_origins
        self._session = _NoRedirects()

    def send(self, device: dict[str, Any], push: Push) -> None:
        subscription = {"endpoint": device["address"], "keys": device["keys"]}
        try:
            # Again at each push: the host may resolve elsewhere than at registration.
            check_endpoint_now(device["address"], self._unchecked)
        except BadRequest as exc:
            raise PushFailed(exc.message, retryable=False) from exc
        try:
            webpush(
                subscription,
                data=push.web_payload(),
                vapid_private_key=self._key,
                vapid_claims={"sub": self._subject},
                timeout=self._timeout,
                ttl=self._ttl,
                # Topic: a newer push with the same topic replaces one still waiting.
                headers={"Topic": web_push_topic(push.collapse_key), "Urgency": "normal"},
                requests_session=self._session,
            )
        except WebPushException as exc:
            if exc.response is None:  # refused before any request: the stored keys
                raise PushFailed("web push: the subscription is refused", retryable=False) from exc
            raise _failed(exc.response.status_code, "web push refused") from exc
        except requests.RequestException as exc:
            raise PushFailed(f"web push: {type(exc).__name__}", retryable=True) from exc


class FcmService:
    """FCM HTTP v1: ``POST {base}/v1/projects/{project}/messages:send`` with an OAuth
    token made from the service account, cached by google-auth until it expires."""

    def __init__(self, settings: PushSettings) -> None:
        assert settings.fcm_credentials is not None
        self._credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            settings.fcm_credentials, scopes=[FCM_SCOPE]
        )
        self._project = self._credentials.project_id
        self._url = f"{settings.fcm_base_url}/v1/projects/{self._project}/messages:send"
        self._timeout = settings.timeout
        self._session = requests.Session()
        self._lock = threading.Lock()

    def _token(self, refresh: bool = False) -> str:
        with self._lock:
            if refresh or not self._credentials.valid:
                request = google.auth.transport.requests.Request(self._session)
                try:
                    self._credentials.refresh(request)
                except Exception as exc:  # google.auth.exceptions.*: the token endpoint
                    raise PushFailed(f"fcm token: {type(exc).__name__}", retryable=True) from exc
            return str(self._credentials.token)

    def send(self, device: dict[str, Any], push: Push) -> None:
        message = {
            "message": {
                "token": device["address"],
                "notification": {"title": push.title, "body": push.body},
                "data": push.data,
                "android": {
                    "collapse_key": push.collapse_key,
                    "notification": {"tag": push.collapse_key, "notification_count": push.badge},
                },
                "apns": {
                    "headers": {"apns-collapse-id": push.collapse_key[:64]},
                    "payload": {"aps": {"badge": push.badge}},
                },
            }
        }
        response = self._post(message, self._token())
        if response.status_code == 401:  # revoked or expired early: one new token
            response = self._post(message, self._token(refresh=True))
        if response.status_code == 200:
            return
        if _error_code(response) == "UNREGISTERED":
            raise PushFailed("fcm: the token is no longer registered", retryable=False, gone=True)
        raise _failed(response.status_code, "fcm refused")

    def _post(self, message: dict[str, Any], token: str) -> requests.Response:
        try:
            return self._session.post(
                self._url,
                json=message,
                headers={"Authorization": f"Bearer {token}"},
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            raise PushFailed(f"fcm: {type(exc).__name__}", retryable=True) from exc


def _error_code(response: requests.Response) -> str | None:
    """FCM's ``errorCode`` from the error's details (``google.firebase.fcm.v1.FcmError``)."""
    try:
        details = response.json()["error"].get("details", [])
    except (ValueError, KeyError, AttributeError, TypeError):
        return None
    for detail in details:
        if isinstance(detail, dict) and detail.get("errorCode"):
            return str(detail["errorCode"])
    return None
