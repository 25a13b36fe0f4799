"""Tenants: the clinics one hub serves, and what each sets apart from the hub's defaults.

A tenant is named by the identity provider that signed a person's token (its
``HUB_OIDC_ISSUERS`` entry) or by the service key a back-end presents; never by what a
client sends. Every tenant has a MongoDB database of its own and a prefix on every Redis
key and Socket.IO room (``storage.tenants``, ``channels.names``, ``hub.core.rooms``),
so the same user id in two clinics is two people who never meet. ``default`` is the
tenant of a hub that serves one clinic: its database and keys keep their unprefixed
names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from hub.core.phone import check_e164

DEFAULT_TENANT = "default"
# Lowercase so that a database name and a Redis key read the same; short so that a
# database name stays far below MongoDB's 64 bytes.
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class ClinicState(StrEnum):
    """Where a clinic stands (``PUT /api/v1/clinics/{id}``). Only an active clinic is
    served; a suspended or removed one keeps its database until an operator drops it."""

    ACTIVE = "active"
    SUSPENDED = "suspended"  # may be made active again
    REMOVED = "removed"  # its id stays taken: a new clinic under it would see the old data


@dataclass(frozen=True, slots=True)
class Tenant:
    """One clinic's own settings; None keeps the hub's (``HUB_CLINIC_NAME``, ``TWILIO_*``,
    ``HUB_SMS_DAILY_CAP``, ``HUB_FHIR_*_SYSTEM``). Office hours and retention are set per
    clinic by its back-end (``PUT /api/v1/clinic/...``), which writes to the clinic's own
    database."""

    tenant_id: str
    clinic_name: str | None = None
    twilio_from_number: str | None = None
    twilio_messaging_service_sid: str | None = None
    sms_daily_cap: int | None = None
    fhir_patient_system: str | None = None  # its EHR's identifier systems of the hub's ids
    fhir_practitioner_system: str | None = None
    # Its own identity provider, whose people are the clinic's (None: the hub's).
    identity_provider: OidcIssuer | None = None
    state: ClinicState = ClinicState.ACTIVE

    def settings(self) -> dict[str, Any]:
        """Its own settings, as the operator API shows them and the registry stores
        them (None: the hub's)."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name in SETTINGS}
        if self.identity_provider is not None:
            own["identity_provider"] = issuer_entry(self.identity_provider)
        return own


SETTINGS = (
    "clinic_name",
    "twilio_from_number",
    "twilio_messaging_service_sid",
    "sms_daily_cap",
    "fhir_patient_system",
    "fhir_practitioner_system",
    "identity_provider",
)


def check_tenant_id(value: object) -> str:
    if not isinstance(value, str) or not TENANT_PATTERN.fullmatch(value):
        raise ValueError("a tenant id is 1-32 lowercase letters, digits and -, first no -")
    return value


def parse_tenants(raw: str) -> tuple[Tenant, ...]:
    """``HUB_TENANTS``: a JSON list of ``{tenant_id, clinic_name?, twilio_from_number?,
    twilio_messaging_service_sid?, sms_daily_cap?, fhir_patient_system?,
    fhir_practitioner_system?, identity_provider?}``."""
    try:
        items = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError("not JSON: expected a list of tenants") from None
    if not isinstance(items, list):
        raise ValueError("expected a JSON list of tenants")
    tenants = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"tenant {n}: an object with a `tenant_id`")
        try:
            tenants.append(parse_tenant(item.get("tenant_id"), item))
        except ValueError as exc:
            raise ValueError(f"tenant {n}: {exc}") from None
    ids = [t.tenant_id for t in tenants]
    if len(set(ids)) != len(ids):
        raise ValueError("each tenant_id once")
    return tuple(tenants)


def parse_tenant(tenant_id: object, item: dict[str, Any], *, state: bool = False) -> Tenant:
    """One clinic: ``tenant_id`` and its settings (``SETTINGS``, each optional), and with
    ``state`` its ``state`` too. ValueError naming the first field that is wrong."""
    known = {"tenant_id", *SETTINGS, *(("state",) if state else ())}
    unknown = set(item) - known
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    cap = item.get("sms_daily_cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ValueError("sms_daily_cap is a positive integer")
    texts = ("clinic_name", "twilio_messaging_service_sid")
    for name in (*texts, "fhir_patient_system", "fhir_practitioner_system"):
        if item.get(name) is not None and not (isinstance(item[name], str) and item[name]):
            raise ValueError(f"{name} is a non-empty string")
    sender = item.get("twilio_from_number")
    tenant = check_tenant_id(tenant_id)
    provider = item.get("identity_provider")
    try:
        issuer = None if provider is None else parse_issuer(provider, tenant=tenant)
    except ValueError as exc:
        raise ValueError(f"identity_provider: {exc}") from None
    try:
        clinic_state = ClinicState(item.get("state", ClinicState.ACTIVE))
    except ValueError:
        raise ValueError("state is one of " + ", ".join(ClinicState)) from None
    return Tenant(
        tenant_id=tenant,
        clinic_name=item.get("clinic_name"),
        twilio_from_number=None if sender is None else check_e164(str(sender)),
        twilio_messaging_service_sid=item.get("twilio_messaging_service_sid"),
        sms_daily_cap=cap,
        fhir_patient_system=item.get("fhir_patient_system"),
        fhir_practitioner_system=item.get("fhir_practitioner_system"),
        identity_provider=issuer,
        state=clinic_state,
    )


# Identity providers: from HUB_OIDC_ISSUERS (hub.core.settings), or a clinic's own.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
ROLE_NAMES = frozenset({"patient", "doctor", "nurse", "staff", "admin"})


@dataclass(frozen=True, slots=True)
class OidcIssuer:
    """An identity provider whose tokens the hub accepts, with the keys it publishes.

    Its tokens are checked with its own keys only (fetched from ``jwks_url``, or from
    the ``jwks_uri`` of its ``/.well-known/openid-configuration`` when that is None),
    with ``algorithms`` pinned, ``iss`` equal to ``issuer`` and ``aud`` containing
    ``audience`` when set. ``roles_claim`` is a dotted path to the claim that holds the
    person's roles (``realm_access.roles`` for Keycloak); ``role_map`` maps the
    provider's role names to the hub's (unmapped names that are hub roles count as
    themselves). ``tenant`` is the clinic its people belong to; with ``tenant_claim``
    (a claim name or dotted path), the clinic is that claim's value instead, and must be
    one of ``tenants``: a provider shared by several clinics names each person's.
    """

    issuer: str
    jwks_url: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ("RS256",)
    tenant: str = DEFAULT_TENANT
    tenant_claim: str | None = None
    tenants: tuple[str, ...] = ()
    roles_claim: str = "role"
    role_map: Mapping[str, str] = field(default_factory=dict)
    name_claim: str = "name"


FIELDS = frozenset(f.name for f in fields(OidcIssuer))
# What a clinic's own entry may not say: its people are the clinic's, and only its.
CLINIC_ONLY = frozenset({"tenant", "tenant_claim", "tenants"})


def parse_issuer(item: object, *, tenant: str | None = None) -> OidcIssuer:
    """One entry (a JSON object); ValueError naming what is wrong. With ``tenant``
    (a clinic's own entry), its people are that clinic's, and the entry may not say
    otherwise."""
    if not isinstance(item, dict) or not isinstance(item.get("issuer"), str):
        raise ValueError("an object with an `issuer` URL")
    allowed = FIELDS - CLINIC_ONLY if tenant is not None else FIELDS
    unknown = set(item) - allowed
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    algorithms = tuple(item.get("algorithms") or ("RS256",))
    if not set(algorithms) <= set(ASYMMETRIC_ALGORITHMS):
        raise ValueError(f"algorithms must be among {ASYMMETRIC_ALGORITHMS}")
    role_map = item.get("role_map") or {}
    if not isinstance(role_map, dict) or not all(
        isinstance(v, str) and v in ROLE_NAMES for v in role_map.values()
    ):
        raise ValueError(f"role_map maps names to {sorted(ROLE_NAMES)}")
    for name in ("issuer", "jwks_url"):
        value = item.get(name)
        if value is not None and (
            not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https")
        ):
            raise ValueError(f"{name}: expected a URL starting with http:// or https://")
    for name in ("audience", "roles_claim", "name_claim", "tenant_claim"):
        value = item.get(name)
        if value is not None and not (isinstance(value, str) and value):
            raise ValueError(f"{name} is a non-empty string")
    return OidcIssuer(
        issuer=item["issuer"],
        jwks_url=item.get("jwks_url"),
        audience=item.get("audience"),
        algorithms=algorithms,
        tenant=tenant or check_tenant_id(item.get("tenant") or DEFAULT_TENANT),
        tenant_claim=item.get("tenant_claim"),
        tenants=tuple(check_tenant_id(t) for t in item.get("tenants") or ()),
        roles_claim=str(item.get("roles_claim") or "role"),
        role_map=dict(role_map),
        name_claim=str(item.get("name_claim") or "name"),
    )


def issuer_entry(issuer: OidcIssuer) -> dict[str, Any]:
    """A clinic's entry as it is stored and shown (what ``parse_issuer`` reads back)."""
    entry: dict[str, Any] = {
        f.name: getattr(issuer, f.name) for f in fields(issuer) if f.name not in CLINIC_ONLY
    }
    entry["algorithms"] = list(issuer.algorithms)
    entry["role_map"] = dict(issuer.role_map)
    return entry
