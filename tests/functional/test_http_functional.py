"""The HTTP surface: the protocol's error shape on every /api/ answer, origins,
request ids, and the paths a browser asks for on its own."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import pytest

from hub.core.protocol import SOCKETIO_PATH
from hub.server.appkeys import SERVICES
from tests.support.hubs import TIMEOUT, HubFixture


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))


@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("POST", "/api/v1/events/appointments", 413, "too_large"),
        ("PUT", "/api/v1/users/pat-1/contact", 413, "too_large"),
        ("GET", "/api/v1/no/such/route", 404, "not_found"),
        ("DELETE", "/api/v1/events/appointments", 405, "method_not_allowed"),
        ("GET", "/api/v1/users/pat-1/contact", 405, "method_not_allowed"),
    ],
)
async def test_every_api_refusal_has_the_protocols_json_shape(
    hub: HubFixture, method: str, path: str, status: int, code: str
):
    """A body over 64 KiB on a service-key route was a 500 (HTTPRequestEntityTooLarge
    in the log); unknown routes and wrong methods were aiohttp's text pages."""
    key = await hub.app()[SERVICES].service_keys.create("backend")
    body = b"{" + b" " * (hub.settings.max_frame_bytes + 10) + b"}"
    async with session() as http:
        async with http.request(
            method,
            str(hub.servers[0].make_url(path)),
            data=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            assert response.status == status
            assert response.content_type == "application/json"
            answer = await response.json()
            if status == 405:
                assert response.headers["Allow"]
    assert answer["ok"] is False
    assert answer["error"]["code"] == code
    assert answer["error"]["message"]


async def test_request_ids_of_a_proxy_are_kept_when_they_are_plain_tokens(hub: HubFixture):
    """A UUID (dashes) was replaced although the docs said any plain token is kept."""
    url = str(hub.servers[0].make_url("/health"))
    async with session() as http:
        given = "3f2b9c1e-8d4a-4c51-9a7e-2b6f0d1c3e4a"
        async with http.get(url, headers={"X-Request-Id": given}) as response:
            assert response.headers["X-Request-Id"] == given
        async with http.get(url, headers={"X-Request-Id": 'a b"<c>'}) as response:
            assert response.headers["X-Request-Id"] != 'a b"<c>'
            assert response.headers["X-Request-Id"].isalnum()


async def test_the_root_and_the_favicon_lead_to_the_console(hub: HubFixture):
    async with session() as http:
        async with http.get(str(hub.servers[0].make_url("/"))) as response:
            assert response.status == 200
            assert response.url.path == "/console/"
        async with http.get(str(hub.servers[0].make_url("/favicon.ico"))) as response:
            assert response.status == 200
            assert response.content_type == "image/svg+xml"


async def _handshake(url: str, origin: str | None, transport: str) -> int:
    headers = {"Origin": origin} if origin else {}
    async with session() as http:
        if transport == "polling":
            async with http.get(
                url, params={"EIO": "4", "transport": "polling"}, headers=headers
            ) as response:
                return response.status
        try:
            async with http.ws_connect(f"{url}?EIO=4&transport=websocket", headers=headers) as ws:
                message = await ws.receive(TIMEOUT)
                return 101 if str(message.data).startswith("0{") else 400
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_browsers_of_other_origins_are_refused_unless_configured(
    hub: HubFixture, transport: str
):
    """With HUB_CORS_ORIGINS unset, the upgrade and polling accepted any Origin."""
    server = hub.servers[0]
    url = str(server.make_url(f"/{SOCKETIO_PATH}/"))
    own = f"http://{server.host}:{server.port}"
    accepted = 101 if transport == "websocket" else 200
    assert await _handshake(url, "https://evil.example", transport) == 400
    assert await _handshake(url, own, transport) == accepted
    assert await _handshake(url, None, transport) == accepted  # not a browser page

    listed = await hub.start(replace(hub.settings, cors_origins=("https://app.clinic.example",)))
    url = str(listed.make_url(f"/{SOCKETIO_PATH}/"))
    assert await _handshake(url, "https://app.clinic.example", transport) == accepted
    assert await _handshake(url, "https://evil.example", transport) == 400

    anyone = await hub.start(replace(hub.settings, cors_origins=("*",)))
    url = str(anyone.make_url(f"/{SOCKETIO_PATH}/"))
    assert await _handshake(url, "https://evil.example", transport) == accepted
