"""What a Web Push subscription may be: https endpoints of public hosts, RFC 8291 keys."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hub.core.errors import BadRequest
from hub.core.push_endpoints import check_addresses, check_endpoint, check_keys, host_of, public


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def point() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def test_keys_of_a_real_browser_subscription_pass():
    check_keys(b64(point()), b64(os.urandom(16)))


@pytest.mark.parametrize(
    "p256dh, auth, field",
    [
        ("not base64!", b64(os.urandom(16)), "p256dh"),
        (b64(b"\x04" + os.urandom(10)), b64(os.urandom(16)), "p256dh"),  # too short
        (b64(b"\x04" + b"\x01" * 64), b64(os.urandom(16)), "p256dh"),  # off the curve
        (b64(b"\x02" + os.urandom(64)), b64(os.urandom(16)), "p256dh"),  # not uncompressed
        (b64(point()), b64(os.urandom(15)), "auth"),
        (b64(point()), "", "auth"),
    ],
)
def test_keys_that_would_fail_in_the_worker_are_refused_naming_the_field(
    p256dh: str, auth: str, field: str
):
    """An invalid key raised ``ValueError('Invalid EC key.')`` in the worker, which
    stopped the loop over the person's devices."""
    with pytest.raises(BadRequest, match=f"subscription.keys.{field}"):
        check_keys(p256dh, auth)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://push.example.org/x",  # not https
        "https:///x",
        "https://user:pw@push.example.org/x",
        "ftp://push.example.org/x",
        "https://push.example.org:99999/x",
    ],
)
def test_an_endpoint_must_be_an_https_url_of_a_host(endpoint: str):
    with pytest.raises(BadRequest, match="subscription.endpoint"):
        host_of(endpoint)


def test_an_unchecked_origin_is_exempt_and_only_it():
    origins = ["http://127.0.0.1:8123"]
    assert host_of("http://127.0.0.1:8123/wp/1", origins) is None
    with pytest.raises(BadRequest):
        host_of("http://127.0.0.1:8124/wp/1", origins)
    assert host_of("https://fcm.googleapis.com/fcm/send/x", origins) == "fcm.googleapis.com"


@pytest.mark.parametrize(
    "address, ok",
    [
        ("142.250.74.206", True),
        ("2a00:1450:4007:80e::200a", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.9", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # shared (CGNAT)
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fd00::1", False),  # unique local
        ("fe80::1%eth0", False),  # link-local, with a scope id
        ("::ffff:10.0.0.1", False),  # IPv4-mapped private
        ("::ffff:142.250.74.206", True),
    ],
)
def test_only_public_addresses_pass(address: str, ok: bool):
    assert public(address) is ok


def test_a_host_with_one_private_address_among_public_ones_is_refused():
    with pytest.raises(BadRequest, match="not a public address"):
        check_addresses(["142.250.74.206", "10.0.0.7"])
    with pytest.raises(BadRequest, match="does not resolve"):
        check_addresses([])


async def test_a_name_that_resolves_to_loopback_is_refused():
    """Any patient could make the worker POST to a host inside the clinic's network."""
    with pytest.raises(BadRequest, match="not a public address"):
        await check_endpoint("https://localhost:8443/wp/1", (), timeout=2.0)
    with pytest.raises(BadRequest, match="not a public address"):
        await check_endpoint("https://127.0.0.1/wp/1", (), timeout=2.0)
