"""Socket.IO room names: each spelled here, once, within its clinic."""

from __future__ import annotations

from dataclasses import dataclass

from hub.core.tenants import DEFAULT_TENANT


def tenant_prefix(tenant: str) -> str:
    """What starts every room and Redis key of clinic ``tenant``: nothing for
    ``default`` (a hub of one clinic keeps the names it always had), ``t:<tenant>:``
    for the others. No name of ``default`` starts ``t:``, so two clinics never share one."""
    return "" if tenant == DEFAULT_TENANT else f"t:{tenant}:"


@dataclass(frozen=True, slots=True)
class Rooms:
    """The rooms of one clinic: the same user id in two clinics is two rooms."""

    tenant: str = DEFAULT_TENANT

    def user(self, user_id: str) -> str:
        """The room every device of a user joins."""
        return f"{tenant_prefix(self.tenant)}user:{user_id}"

    def consultation(self, consultation_id: str) -> str:
        """The room of a consultation's doctor and patient devices (transcript)."""
        return f"{tenant_prefix(self.tenant)}consultation:{consultation_id}"


DEFAULT_ROOMS = Rooms()  # the rooms of a hub of one clinic
