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
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

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
    state: ClinicState = ClinicState.ACTIVE

    def settings(self) -> dict[str, Any]:
        """Its own settings, as the operator API shows them (None: the hub's)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in SETTINGS}


SETTINGS = (
    "clinic_name",
    "twilio_from_number",
    "twilio_messaging_service_sid",
    "sms_daily_cap",
    "fhir_patient_system",
    "fhir_practitioner_system",
)


def check_tenant_id(value: object) -> str:
    if not isinstance(value, str) or not TENANT_PATTERN.fullmatch(value):
        raise ValueError("a tenant id is 1-32 lowercase letters, digits and -, first no -")
    return value


def parse_tenants(raw: str) -> tuple[Tenant, ...]:
    """``HUB_TENANTS``: a JSON list of ``{tenant_id, clinic_name?, twilio_from_number?,
    twilio_messaging_service_sid?, sms_daily_cap?, fhir_patient_system?,
    fhir_practitioner_system?}``."""
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
    try:
        clinic_state = ClinicState(item.get("state", ClinicState.ACTIVE))
    except ValueError:
        raise ValueError("state is one of " + ", ".join(ClinicState)) from None
    return Tenant(
        tenant_id=check_tenant_id(tenant_id),
        clinic_name=item.get("clinic_name"),
        twilio_from_number=None if sender is None else check_e164(str(sender)),
        twilio_messaging_service_sid=item.get("twilio_messaging_service_sid"),
        sms_daily_cap=cap,
        fhir_patient_system=item.get("fhir_patient_system"),
        fhir_practitioner_system=item.get("fhir_practitioner_system"),
        state=clinic_state,
    )
