"""Token verification: claims, algorithms and key kinds."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hub.core.auth import TokenVerifier, bearer_token, issue_token
from hub.core.errors import Unauthorized
from hub.core.settings import Settings

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks

SECRET = "k" * 40


def claims(**extra: object) -> dict[str, object]:
    return {
        "sub": "u1",
        "role": "doctor",
        "exp": int(time.time()) + 3600,
        **extra,
    }  # built at collection


async def test_issued_token_round_trips():
    settings = Settings.from_env({"HUB_JWT_SECRET": SECRET})
    principal = await TokenVerifier(settings).verify(issue_token(settings, "doc-1", "doctor"))
    assert (principal.user_id, principal.role) == ("doc-1", "doctor")


async def test_audience_and_issuer_are_required_when_configured():
    settings = Settings.from_env(
        {"HUB_JWT_SECRET": SECRET, "HUB_JWT_AUDIENCE": "hub", "HUB_JWT_ISSUER": "clinic"}
    )
    verifier = TokenVerifier(settings)
    with pytest.raises(Unauthorized):
        await verifier.verify(jwt.encode(claims(), SECRET, "HS256"))
    with pytest.raises(Unauthorized):
        await verifier.verify(jwt.encode(claims(aud="other", iss="clinic"), SECRET, "HS256"))
    good = jwt.encode(claims(aud="hub", iss="clinic"), SECRET, "HS256")
    assert (await verifier.verify(good)).user_id == "u1"
    assert (await verifier.verify(issue_token(settings, "u2", "patient"))).user_id == "u2"


async def test_public_key_used_as_hmac_secret_is_refused():
    """The classic RS/HS confusion: sign HS256 with the public PEM as the secret."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings = Settings.from_env({"HUB_JWT_PUBLIC_KEY": public_pem.decode()})
    verifier = TokenVerifier(settings)
    assert (await verifier.verify(jwt.encode(claims(), key, "RS256"))).role == "doctor"
    forged = jwt.api_jws.PyJWS().encode(
        jwt.utils.force_bytes(f'{{"sub":"u1","role":"admin","exp":{int(time.time() + 3600)}}}'),
        key=b"x" * 32,
        algorithm="HS256",
    )
    with pytest.raises(Unauthorized):
        await verifier.verify(forged)


@pytest.mark.parametrize(
    "header, token",
    [("Bearer abc", "abc"), ("bearer abc", "abc"), ("Basic abc", None), (None, None), ("", None)],
)
async def test_bearer_token(header: str | None, token: str | None):
    assert bearer_token(header) == token


def _rsa_verifier() -> tuple[TokenVerifier, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return TokenVerifier(Settings.from_env({"HUB_JWT_PUBLIC_KEY": public_pem.decode()})), key


async def refusal_of(verifier: TokenVerifier, token: object) -> str:
    with pytest.raises(Unauthorized) as refused:
        await verifier.verify(token)
    return refused.value.message


@pytest.mark.parametrize(
    "token, says",
    [
        ("abc", "malformed token"),
        ("a.b", "malformed token"),
        ("e30.e30.!!!", "malformed token"),
        ("hub_live_\x86\x00.x.y", "malformed token"),
        (jwt.encode(claims(), "x" * 40, "HS256"), "invalid token: bad signature"),
        (jwt.encode(claims(exp=int(time.time()) - 60), SECRET, "HS256"), "token expired"),
        (jwt.encode(claims(nbf=int(time.time()) + 600), SECRET, "HS256"), "token not valid yet"),
        (
            jwt.encode({"sub": "u1", "role": "doctor"}, SECRET, "HS256"),
            "invalid token: the exp claim is required",
        ),
        (
            jwt.encode(claims(), SECRET * 2, "HS384"),
            "invalid token: signing algorithm not accepted",
        ),
        (
            jwt.encode(claims(role=["admin"]), SECRET, "HS256"),
            "invalid token: role must be patient, doctor, nurse, staff or admin",
        ),
        (
            jwt.encode(claims(role={"admin": 1}), SECRET, "HS256"),
            "invalid token: role must be patient, doctor, nurse, staff or admin",
        ),
    ],
)
async def test_refusals_are_in_the_hubs_words(token: str, says: str):
    """PyJWT's own text ("Not enough segments", "Invalid crypto padding", a codec
    error) reached unauthenticated clients, and a role that was a list raised
    TypeError (unhashable), leaving the connection unanswered."""
    verifier = TokenVerifier(Settings.from_env({"HUB_JWT_SECRET": SECRET}))
    assert await refusal_of(verifier, token) == says


async def test_an_rsa_key_accepts_no_ec_token_and_says_nothing_of_itself():
    """ES256 was accepted next to an RSA key by default, and the refusal of such a
    token quoted the key's type and a heap address."""
    verifier, key = _rsa_verifier()
    assert (await verifier.verify(jwt.encode(claims(), key, "RS256"))).user_id == "u1"
    other = ec.generate_private_key(ec.SECP256R1())
    message = await refusal_of(verifier, jwt.encode(claims(), other, "ES256"))
    assert message == "invalid token: signing algorithm not accepted"
    assert "RSA" not in message and "0x" not in message


@pytest.mark.parametrize(
    "claims, path, role",
    [
        ({"realm_access": {"roles": ["x", "clinic-doctor"]}}, "realm_access.roles", "doctor"),
        (
            {"https://clinic.example/roles": ["clinic-doctor"]},
            "https://clinic.example/roles",
            "doctor",
        ),
        ({"groups": ["clinic-doctor", "clinic-admin"]}, "groups", "admin"),  # most trusted
        # With a map, a provider group that happens to be called ``admin`` grants nothing.
        ({"groups": ["patient", "admin"]}, "groups", None),
        ({"role": "nurse"}, "role", None),
        ({"realm_access": {"roles": ["offline_access"]}}, "realm_access.roles", None),
        ({"realm_access": "not a dict"}, "realm_access.roles", None),
    ],
)
async def test_roles_are_read_from_the_providers_claim(
    claims: dict[str, object], path: str, role: str | None
):
    from hub.core.auth import _claim, _role

    role_map = {"clinic-doctor": "doctor", "clinic-admin": "admin"}
    assert _role(_claim(claims, path), role_map) == role


@pytest.mark.parametrize(
    "given, role",
    [(["patient", "admin"], "admin"), ("nurse", "nurse"), (["owner"], None)],
)
async def test_without_a_role_map_the_hubs_own_role_names_are_taken(given: object, role: str):
    from hub.core.auth import _role

    assert _role(given, {}) == role


async def test_expiry_is_read_on_the_hubs_clock():
    """PyJWT read the system's time: a hub whose clock a test set still took a token
    expired on that clock."""
    from datetime import UTC, datetime, timedelta

    from hub.core import clock

    settings = Settings.from_env({"HUB_JWT_SECRET": SECRET})
    verifier = TokenVerifier(settings)
    start = datetime(2031, 3, 30, 0, 59, tzinfo=UTC)
    with clock.use(clock.ManualClock(start)) as manual:
        token = issue_token(settings, "doc-1", "doctor", ttl=60)
        principal = await verifier.verify(token)
        assert principal.expires_at == (start + timedelta(seconds=60)).timestamp()
        assert principal.issued_at == start.timestamp()
        assert isinstance(manual, clock.ManualClock)
        manual.advance(60 + 6)  # past exp and its leeway
        with pytest.raises(Unauthorized, match="token expired"):
            await verifier.verify(token)
