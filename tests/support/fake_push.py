"""Local servers that behave like the push services, for the real client libraries.

* **Web Push** (RFC 8030): ``POST /wp/{id}``, the body encrypted as RFC 8291 says
  (``aes128gcm``) and signed with VAPID (RFC 8292: ``Authorization: vapid t=<JWT>,
  k=<key>``). The fake checks the JWT with the key it names and decrypts the body with
  the subscription's private key, as a browser's push service and the browser would
  between them; ``201`` when accepted, ``410`` for a subscription that is gone.
* **FCM HTTP v1**: ``POST /v1/projects/{project}/messages:send`` with a bearer token,
  and the OAuth token endpoint a service account's ``token_uri`` names: a JWT
  assertion signed with the account's key, answered with an access token.
  ``UNREGISTERED`` (404, with the ``FcmError`` detail) for tokens that start ``gone-``.

It runs on its own thread and event loop, so worker processes reach it while tests
wait on it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import http_ece
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hub.server.embedded import free_port

PROJECT = "clinic-hub-test"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscription:
    """A browser's side of a Web Push subscription: its keys and what it received."""

    subscription_id: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    endpoint: str

    def to_json(self) -> dict[str, Any]:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "keys": {"p256dh": b64url(point), "auth": b64url(self.auth)},
        }


def new_subscription(service_url: str) -> Subscription:
    """A browser's new subscription at the push service ``service_url``."""
    subscription_id = uuid.uuid4().hex
    return Subscription(
        subscription_id,
        ec.generate_private_key(ec.SECP256R1()),
        os.urandom(16),
        f"{service_url}/wp/{subscription_id}",
    )


@dataclass
class FakePush:
    web: list[dict[str, Any]] = field(default_factory=list)  # decrypted pushes, with headers
    fcm: list[dict[str, Any]] = field(default_factory=list)  # FCM messages received
    tokens_issued: int = 0
    requests: int = 0
    fail_next: list[int] = field(default_factory=list)  # statuses for the next requests
    delay: float = 0.0  # seconds before answering (a slow service)
    gone: set[str] = field(default_factory=set)  # web push subscription ids
    url: str = ""

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._subscriptions: dict[str, Subscription] = {}
        self._account_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._access_tokens: set[str] = set()
        self.received = threading.Event()

    # -- control, from the test's thread ---------------------------------------------

    def start(self) -> FakePush:
        self._thread.start()
        port = free_port()
        asyncio.run_coroutine_threadsafe(self._serve(port), self._loop).result(10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def subscribe(self) -> Subscription:
        subscription = new_subscription(self.url)
        self._subscriptions[subscription.subscription_id] = subscription
        return subscription

    def service_account(self, path: Path) -> Path:
        """A service-account JSON whose ``token_uri`` is this server."""
        pem = self._account_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": PROJECT,
                    "private_key_id": "test-key",
                    "private_key": pem,
                    "client_email": f"hub@{PROJECT}.iam.gserviceaccount.com",
                    "client_id": "1",
                    "token_uri": f"{self.url}/token",
                }
            )
        )
        return path

    def wait_for(self, count: int, timeout: float, kind: str = "web") -> list[dict[str, Any]]:
        with self._changed:
            got = self.web if kind == "web" else self.fcm
            if not self._changed.wait_for(lambda: len(got) >= count, timeout):
                raise AssertionError(f"{len(got)} {kind} pushes, expected {count}")
            return list(got)

    # -- the services -----------------------------------------------------------------

    async def _serve(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/wp/{subscription_id}", self._web_push)
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._fcm_send)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()

    def _planned(self) -> int | None:
        with self._changed:
            self.requests += 1
            return self.fail_next.pop(0) if self.fail_next else None

    async def _web_push(self, request: web.Request) -> web.Response:
        status = self._planned()
        if self.delay:
            await asyncio.sleep(self.delay)
        subscription = self._subscriptions.get(request.match_info["subscription_id"])
        if subscription is None or subscription.subscription_id in self.gone:
            return web.Response(status=410, text="subscription expired")
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        params = dict(part.strip().split("=", 1) for part in credentials.split(",") if "=" in part)
        if scheme.lower() != "vapid" or "t" not in params or "k" not in params:
            return web.Response(status=401, text="VAPID required")
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(params["k"]))
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.url))
        try:
            claims = jwt.decode(params["t"], public, algorithms=["ES256"], audience=origin)
        except jwt.PyJWTError as exc:
            return web.Response(status=403, text=f"bad VAPID token: {exc}")
        if status is not None:
            return web.Response(status=status, text="planned failure")
        body = await request.read()
        if request.headers.get("Content-Encoding") != "aes128gcm":
            return web.Response(status=415, text="aes128gcm only")
        plain = http_ece.decrypt(
            body,
            private_key=subscription.private_key,
            auth_secret=subscription.auth,
            version="aes128gcm",
        )
        record = {
            "subscription_id": subscription.subscription_id,
            "payload": json.loads(plain),
            "raw": plain,
            "vapid": claims,
            "vapid_key": params["k"],
            "ttl": request.headers.get("TTL"),
            "topic": request.headers.get("Topic"),
            "urgency": request.headers.get("Urgency"),
            "at": datetime.now(UTC),
        }
        with self._changed:
            self.web.append(record)
            self._changed.notify_all()
        self.received.set()
        return web.Response(status=201, headers={"Location": f"{self.url}/msg/{uuid.uuid4().hex}"})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            claims = jwt.decode(
                str(form.get("assertion")),
                self._account_key.public_key(),
                algorithms=["RS256"],
                # google-auth addresses the assertion to Google's token endpoint, as
                # Google's servers expect, wherever token_uri sends it.
                audience=GOOGLE_TOKEN_AUDIENCE,
            )
        except jwt.PyJWTError as exc:
            return web.json_response(
                {"error": "invalid_grant", "error_description": str(exc)}, status=400
            )
        if "firebase.messaging" not in str(claims.get("scope", "")):
            return web.json_response({"error": "invalid_scope"}, status=400)
        token = "ya29." + uuid.uuid4().hex
        with self._changed:
            self.tokens_issued += 1
            self._access_tokens.add(token)
        return web.json_response(
            {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        )

    async def _fcm_send(self, request: web.Request) -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if request.match_info["project"] != PROJECT or bearer not in self._access_tokens:
            return _fcm_error(401, "UNAUTHENTICATED", None)
        status = self._planned()
        if status is not None:
            return _fcm_error(status, "UNAVAILABLE" if status >= 500 else "INVALID_ARGUMENT", None)
        message = (await request.json())["message"]
        if str(message.get("token", "")).startswith("gone-"):
            return _fcm_error(404, "NOT_FOUND", "UNREGISTERED")
        with self._changed:
            self.fcm.append(message)
            self._changed.notify_all()
        self.received.set()
        return web.json_response({"name": f"projects/{PROJECT}/messages/{uuid.uuid4().hex}"})


def _fcm_error(status: int, state: str, error_code: str | None) -> web.Response:
    details = (
        [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]
        if error_code
        else []
    )
    return web.json_response(
        {"error": {"code": status, "message": state.lower(), "status": state, "details": details}},
        status=status,
    )
