"""Uploading and downloading attachments over HTTP, as a client app does."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.support.hubs import TIMEOUT, Client, HubFixture

UPLOAD_TIMEOUT = 30.0


def http_session(timeout: float = UPLOAD_TIMEOUT) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))


async def upload(
    hub: HubFixture,
    client: Client,
    conversation_id: str,
    data: bytes | io.BytesIO | AsyncIterator[bytes],
    name: str = "photo.jpg",
    *,
    content_type: str = "application/octet-stream",
) -> tuple[int, dict[str, Any]]:
    url = hub.servers[0].make_url(f"/api/v1/conversations/{conversation_id}/attachments")
    if isinstance(data, bytes):
        data = io.BytesIO(data)  # aiohttp warns that a large bytes body blocks the loop
    async with http_session() as http:
        async with http.post(
            url,
            data=data,
            headers={
                "Authorization": f"Bearer {client.token}",
                "Content-Type": content_type,
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
            },
        ) as response:
            return response.status, await response.json()


async def uploaded(
    hub: HubFixture, client: Client, conversation_id: str, data: bytes, name: str
) -> dict[str, Any]:
    """Upload and return the attachment, asserting the upload itself was accepted."""
    status, answer = await upload(hub, client, conversation_id, data, name)
    assert status == 201, answer
    return answer["attachment"]


async def download(
    hub: HubFixture, path: str, token: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    async with http_session(TIMEOUT * 2) as http:
        async with http.get(hub.servers[0].make_url(path), headers=all_headers) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                await response.read(),
            )
