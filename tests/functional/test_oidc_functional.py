"""Tokens of identity providers: published keys per issuer, rotation, a provider down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import socketio

from hub.core.errors import Unauthorized
from hub.core.settings import OidcIssuer, Settings
from hub.server.appkeys import SERVICES
from tests.support.fake_idp import FakeIdp
from tests.support.hubs import TIMEOUT, HubFixture, MakeHub


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdp]:
    fake = await FakeIdp("clinic-a", "clinic-b").start()
    for path, kid in (("clinic-a", "a1"), ("clinic-b", "b1")):
        fake.issuers[path].add_key(kid)
    yield fake
    await fake.close()


def with_issuers(settings: Settings, idp: FakeIdp, refetch_after: float = 60.0) -> Settings:
    return replace(
        settings,
        oidc_issuers=(
            # Keycloak's way: discovery, an audience, roles in realm_access.roles.
            OidcIssuer(
                issuer=idp.url("clinic-a"),
                audience="hub",
                tenant="clinic-a",
                roles_claim="realm_access.roles",
                role_map={"clinic-doctor": "doctor", "clinic-patient": "patient"},
            ),
            OidcIssuer(
                issuer=idp.url("clinic-b"), jwks_url=f"{idp.url('clinic-b')}/jwks", tenant="b"
            ),
        ),
        jwks_refetch_after=refetch_after,
    )


def doctor_of_a(idp: FakeIdp, kid: str = "a1", **claims: Any) -> str:
    body = {
        "sub": "dr-a",
        "aud": "hub",
        "name": "Dr A",
        "realm_access": {"roles": ["offline_access", "clinic-doctor"]},
    }
    return idp.token("clinic-a", kid, **{**body, **claims})


async def status_of(hub: HubFixture, token: str) -> int:
    """An authenticated HTTP route: 404 (no office hours) once the token passes."""
    url = hub.servers[0].make_url("/api/v1/clinic/hours")
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status


async def test_each_issuers_tokens_pass_with_its_own_keys_only(
    make_hub: MakeHub, settings: Settings, idp: FakeIdp
):
    hub = await make_hub(with_issuers(settings, idp))
    verifier = hub.app()[SERVICES].verifier
    doctor = await verifier.verify(doctor_of_a(idp))
    assert (doctor.user_id, doctor.role, doctor.name, doctor.tenant) == (
        "dr-a",
        "doctor",
        "Dr A",
        "clinic-a",
    )
    patient = await verifier.verify(idp.token("clinic-b", "b1", sub="pat-b", role="patient"))
    assert (patient.role, patient.tenant) == ("patient", "b")
    client = await hub.connect("dr-a", "doctor", token=doctor_of_a(idp))
    me = await client.call("session:me", {})  # what the console shows: the hub's reading
    assert me["user"] == {"id": "dr-a", "role": "doctor", "name": "Dr A"}

    # Issuer A's name, B's kid and B's key: never checked with B's key.
    forged = doctor_of_a(idp, kid="b1", signer="clinic-b")
    assert await status_of(hub, forged) == 401
    assert await status_of(hub, doctor_of_a(idp)) == 404
    for refused in (
        doctor_of_a(idp, aud="another-app"),
        doctor_of_a(idp, exp=1),
        doctor_of_a(idp, nbf=4_000_000_000),
        doctor_of_a(idp, realm_access={"roles": ["offline_access"]}),  # no hub role
        doctor_of_a(idp, iss="https://elsewhere.example"),
    ):
        assert await status_of(hub, refused) == 401
    with pytest.raises(socketio.exceptions.ConnectionError):
        await hub.connect("dr-a", "doctor", token=forged)
    # Said as what it is, not as an algorithm the hub's own key does not take.
    with pytest.raises(Unauthorized, match="unknown issuer"):
        await verifier.verify(doctor_of_a(idp, iss="https://elsewhere.example"))


async def test_rotated_keys_are_fetched_and_made_up_kids_fetch_once_a_minute(
    make_hub: MakeHub, settings: Settings, idp: FakeIdp
):
    rotating = await make_hub(with_issuers(settings, idp, refetch_after=0))
    assert await status_of(rotating, doctor_of_a(idp)) == 404
    idp.issuers["clinic-a"].add_key("a2")  # the provider rotates: a2 signs from now on
    del idp.issuers["clinic-a"].keys["a1"]
    assert await status_of(rotating, doctor_of_a(idp, kid="a2")) == 404
    assert idp.fetches["clinic-a"] == 2

    limited = await make_hub(with_issuers(settings, idp))
    fetched = idp.fetches["clinic-a"]
    assert await status_of(limited, doctor_of_a(idp, kid="a2")) == 404
    idp.issuers["clinic-a"].add_key("made-up-1")
    idp.issuers["clinic-a"].add_key("made-up-2")
    for kid in ("made-up-1", "made-up-2", "made-up-1"):
        assert await status_of(limited, doctor_of_a(idp, kid=kid)) == 401
    assert idp.fetches["clinic-a"] == fetched + 1  # one fetch in the minute, not four


async def test_a_provider_that_is_down_keeps_known_keys_and_refuses_new_ones(
    make_hub: MakeHub, settings: Settings, idp: FakeIdp
):
    hub = await make_hub(with_issuers(settings, idp, refetch_after=0))
    assert await status_of(hub, doctor_of_a(idp)) == 404
    idp.down = True
    idp.issuers["clinic-a"].add_key("a3")
    assert await status_of(hub, doctor_of_a(idp)) == 404  # a1 is held
    assert await status_of(hub, doctor_of_a(idp, kid="a3")) == 401  # not a 500
    with pytest.raises(socketio.exceptions.ConnectionError):
        await hub.connect("dr-a", "doctor", token=doctor_of_a(idp, kid="a3"))
    idp.down = False
    assert await status_of(hub, doctor_of_a(idp, kid="a3")) == 404
