"""Tenants: how a hub of several clinics is configured, and what names each one's data."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from channels.names import appointments_stream, presence_key
from hub.core.errors import ConfigError, Unauthorized
from hub.core.rooms import Rooms
from hub.core.settings import OidcIssuer, Settings
from hub.core.tenants import Tenant
from storage.service_keys import key_tenant
from storage.tenants import database_name

NORTH = {
    "tenant_id": "north",
    "clinic_name": "North Clinic",
    "twilio_from_number": "+14155550111",
    "fhir_patient_system": "urn:oid:1.2.3.north",
}


def with_tenants(*tenants: dict[str, object], **env: str) -> Settings:
    return Settings.from_env({"HUB_TENANTS": json.dumps(list(tenants)), **env})


def test_each_clinic_has_its_name_sender_and_cap_and_the_hubs_otherwise():
    settings = with_tenants(
        NORTH,
        {"tenant_id": "south", "sms_daily_cap": 9},
        HUB_CLINIC_NAME="Health System",
        TWILIO_ACCOUNT_SID="AC1",
        TWILIO_AUTH_TOKEN="t",
        TWILIO_MESSAGING_SERVICE_SID="MG1",
    )
    assert settings.tenant_ids == ("default", "north", "south")
    north, south = settings.for_tenant("north").sms, settings.for_tenant("south").sms
    assert (north.clinic_name, north.twilio_from_number) == ("North Clinic", "+14155550111")
    # A sender of its own replaces the hub's, messaging service included.
    assert north.twilio_messaging_service_sid is None
    assert (south.clinic_name, south.daily_cap, south.twilio_messaging_service_sid) == (
        "Health System",
        9,
        "MG1",
    )
    assert settings.for_tenant("north").fhir_patient_system == "urn:oid:1.2.3.north"
    assert settings.for_tenant("south").fhir_patient_system is None
    assert settings.for_tenant("default") is settings
    with pytest.raises(ValueError, match="no tenant"):
        settings.for_tenant("east")


def test_providers_name_clinics_too_and_a_tenant_claim_needs_its_list():
    issuers = [
        {"issuer": "https://idp.example/a", "tenant": "west"},
        {"issuer": "https://idp.example/b", "tenant_claim": "clinic", "tenants": ["x", "y"]},
    ]
    settings = Settings.from_env({"HUB_OIDC_ISSUERS": json.dumps(issuers)})
    assert settings.tenant_ids == ("default", "west", "x", "y")
    lone = [{"issuer": "https://idp.example/b", "tenant_claim": "clinic"}]
    with pytest.raises(ConfigError, match="HUB_OIDC_ISSUERS.*tenant_claim"):
        Settings.from_env({"HUB_OIDC_ISSUERS": json.dumps(lone)})


@pytest.mark.parametrize(
    "tenants, says",
    [
        ("{}", "JSON list"),
        ('[{"tenant_id": "North"}]', "lowercase"),
        ('[{"tenant_id": "-x"}]', "lowercase"),
        ('[{"tenant_id": "a"}, {"tenant_id": "a"}]', "once"),
        ('[{"tenant_id": "a", "sms_daily_cap": 0}]', "positive"),
        ('[{"tenant_id": "a", "twilio_from_number": "555"}]', "E.164"),
        ('[{"tenant_id": "a", "colour": "red"}]', "unknown fields"),
    ],
)
def test_invalid_tenants_name_the_variable(tenants: str, says: str):
    with pytest.raises(ConfigError, match=f"HUB_TENANTS.*{says}"):
        Settings.from_env({"HUB_TENANTS": tenants})


def test_a_clinic_name_too_long_for_the_sms_texts_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="HUB_TENANTS: north"):
        with_tenants({"tenant_id": "north", "clinic_name": "N" * 200})


def test_every_name_of_a_clinics_data_carries_the_clinic_but_defaults_keep_theirs():
    assert database_name("hub", "default") == "hub"
    assert database_name("hub", "north") == "hub-north"
    assert Rooms().user("u1") == "user:u1"
    assert Rooms("north").user("u1") == "t:north:user:u1"
    assert Rooms("north").consultation("c1") == "t:north:consultation:c1"
    assert presence_key("default", "u1") == "hub:presence:u1"
    assert presence_key("north", "u1") == "hub:t:north:presence:u1"
    assert appointments_stream("north") == "hub:t:north:appointments"
    with pytest.raises(ValueError):
        database_name("hub", "../admin")


def test_a_service_key_names_its_clinic():
    assert key_tenant("hubk.backend.secret") == "default"
    assert key_tenant("hubk.north.backend.secret") == "north"
    for bad in ("hubk.North.backend.secret", "hubk.a.b.c.d", "other.backend.secret", 7):
        with pytest.raises(Unauthorized):
            key_tenant(bad)


async def test_a_tenant_claim_names_one_of_its_providers_clinics_or_nothing():
    from hub.core.auth import _tenant

    provider = OidcIssuer(issuer="https://idp", tenant_claim="org.clinic", tenants=("x", "y"))
    assert _tenant({"org": {"clinic": "y"}}, provider) == "y"
    for claims in ({"org": {"clinic": "z"}}, {}, {"org": {"clinic": ["x"]}}):
        with pytest.raises(Unauthorized):
            _tenant(claims, provider)
    assert _tenant({}, OidcIssuer(issuer="https://idp", tenant="w")) == "w"


async def test_the_hubs_own_tokens_name_a_clinic_it_serves():
    from hub.core.auth import TokenVerifier, issue_token

    settings = with_tenants(NORTH, HUB_JWT_SECRET="s" * 40)
    verifier = TokenVerifier(settings)
    north = await verifier.verify(issue_token(settings, "u1", "patient", tenant="north"))
    default = await verifier.verify(issue_token(settings, "u1", "patient"))
    assert (north.tenant, default.tenant) == ("north", "default")
    elsewhere = replace(settings, tenants=(Tenant("east"),))
    with pytest.raises(Unauthorized, match="no such clinic"):
        await verifier.verify(issue_token(elsewhere, "u1", "patient", tenant="east"))
    await verifier.close()


def test_only_storage_tenants_turns_a_database_name_into_a_database():
    """A store made on ``client[settings.mongodb_db]`` would read the default clinic's
    documents whatever the clinic of its caller: every database comes from
    ``storage.tenants.tenant_database``."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(path.relative_to(root))
        for part in ("hub", "handlers", "channels", "storage", "workers")
        for path in (root / part).rglob("*.py")
        if path != root / "storage" / "tenants.py" and "mongodb_db]" in path.read_text()
    ]
    assert offenders == []
