"""What a browser's Web Push subscription may be: checked when it is registered, and
its endpoint again before each push.

A subscription comes from a client, and its endpoint is a URL the workers will POST
to: without a check, any patient could make the workers call a host inside the
clinic's network (server-side request forgery). So an endpoint must be ``https``, on
the default or an explicit port, with a host name that resolves only to public
addresses: no loopback, private, link-local, unique-local, shared (CGNAT), multicast
or reserved address, IPv4-mapped forms included. The key material must be what RFC
8291 says: ``p256dh`` an uncompressed P-256 point (65 bytes, on the curve), ``auth``
16 bytes, both base64url.

``unchecked_origins`` (``HUB_PUSH_UNCHECKED_ORIGINS``) lists origins exempt from the
URL checks, for a development machine's or a test's own push service on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from hub.core.errors import BadRequest

P256_POINT_BYTES = 65
AUTH_BYTES = 16


def check_keys(p256dh: str, auth: str) -> None:
    """BadRequest naming the key unless both are what RFC 8291 asks for."""
    point = _b64url("subscription.keys.p256dh", p256dh)
    if len(point) != P256_POINT_BYTES or point[0] != 4:
        raise BadRequest("subscription.keys.p256dh: an uncompressed P-256 point (65 bytes)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise BadRequest("subscription.keys.p256dh: not a point on the P-256 curve") from None
    if len(_b64url("subscription.keys.auth", auth)) != AUTH_BYTES:
        raise BadRequest("subscription.keys.auth: 16 bytes")


def origin_of(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}".lower()


def host_of(endpoint: str, unchecked_origins: Iterable[str] = ()) -> str | None:
    """The host name to resolve and check; None for an origin exempt from the checks.
    BadRequest for an endpoint that is not an ``https`` URL of a host."""
    if origin_of(endpoint) in {o.lower().rstrip("/") for o in unchecked_origins}:
        return None
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        raise BadRequest("subscription.endpoint: not a URL") from None
    if parts.scheme != "https":
        raise BadRequest("subscription.endpoint: must be https")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise BadRequest("subscription.endpoint: an https URL of a push service")
    if port is not None and not 0 < port < 65536:
        raise BadRequest("subscription.endpoint: not a URL")
    return parts.hostname


def public(address: str) -> bool:
    """Whether an IP address is one a push service can have: global, not mapped from a
    private IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # a scope id is not part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_addresses(addresses: Iterable[str]) -> None:
    found = list(addresses)
    if not found:
        raise BadRequest("subscription.endpoint: its host does not resolve")
    if not all(public(address) for address in found):
        raise BadRequest("subscription.endpoint: its host is not a public address")


async def check_endpoint(endpoint: str, unchecked_origins: Iterable[str], timeout: float) -> None:
    """BadRequest unless ``endpoint`` is an https URL whose host resolves, within
    ``timeout`` seconds, to public addresses only."""
    host = host_of(endpoint, unchecked_origins)
    if host is None:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, 443, type=socket.SOCK_STREAM), timeout
        )
    except (OSError, TimeoutError):
        raise BadRequest("subscription.endpoint: its host does not resolve") from None
    check_addresses(str(info[4][0]) for info in infos)


def check_endpoint_now(endpoint: str, unchecked_origins: Iterable[str]) -> None:
    """The same check, blocking: for the workers, just before they POST to it (a host
    that resolved to a public address at registration may not any more)."""
    host = host_of(endpoint, unchecked_origins)
    if host is None:
        return
    try:
        infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except OSError:
        raise BadRequest("subscription.endpoint: its host does not resolve") from None
    check_addresses(str(info[4][0]) for info in infos)


def _b64url(field: str, value: str) -> bytes:
    try:
        padded = value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field}: base64url") from None
