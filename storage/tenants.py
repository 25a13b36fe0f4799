"""Which MongoDB database holds a clinic's documents: the one place that decides it.

Every store is built on the database of one clinic (``tenant``) and has no way to
reach another's, so a query cannot forget to filter by clinic: there is nothing of
another clinic in the database it reads. ``default`` keeps the configured database
(``HUB_MONGODB_DB``), so a hub of one clinic keeps its data where it always was; every
other clinic has ``<HUB_MONGODB_DB>-<tenant>``. A clinic's backups, restores, exports
and deletion are then its database's.
"""

from __future__ import annotations

from typing import Any, TypeVar

from hub.core.tenants import DEFAULT_TENANT, check_tenant_id

Client = TypeVar("Client", bound=Any)


def database_name(base: str, tenant: str) -> str:
    """The database of clinic ``tenant`` on a hub whose database is ``base``."""
    check_tenant_id(tenant)
    return base if tenant == DEFAULT_TENANT else f"{base}-{tenant}"


def tenant_database(client: Any, base: str, tenant: str) -> Any:
    """Clinic ``tenant``'s database on ``client`` (PyMongo's async or synchronous client:
    the hub's stores and the workers' use the same rule)."""
    return client[database_name(base, tenant)]


def platform_database(client: Any, base: str) -> Any:
    """The platform's own database (its registry of clinics, its operator keys): the
    hub's configured one, which ``default`` shares (``storage.names``'s ``platform_``
    collections are no clinic's)."""
    return client[base]
