"""What ``hub keys``, ``hub operator-keys`` and ``hub clinics`` do: keys and clinics,
written straight to the platform's database, the same as the operator API
(``hub.server.platform``) writes them.

In embedded mode they use the running hub's embedded server (from the data dir), or
start one for the duration of the command. A clinic change is announced on the control
channel when ``HUB_REDIS_URL`` is set; the hubs also read the registry every 30 s.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from channels.client import connect as redis_connect
from channels.control import Control, publish_control
from hub.core.errors import HubError
from hub.core.settings import Settings
from hub.core.tenants import DEFAULT_TENANT, ClinicState, parse_tenant
from hub.server import embedded
from storage import mongo
from storage.clinics import ClinicRegistry
from storage.service_keys import ServiceKeys, operator_keys
from storage.tenants import platform_database, tenant_database


@asynccontextmanager
async def _client(settings: Settings) -> AsyncIterator[Any]:
    child: embedded.ChildServer | None = None
    url = settings.mongodb_url or await asyncio.to_thread(
        embedded.running_mongodb, settings.data_dir
    )
    if url is None:
        child = await asyncio.to_thread(embedded.start_mongodb, settings.data_dir / "mongodb")
        url = child.url
    client = mongo.connect(url, settings.mongo_timeout)
    try:
        yield client
    finally:
        await client.close()
        if child is not None:
            await asyncio.to_thread(child.stop)


async def manage_keys(
    settings: Settings,
    action: str,
    name: str | None,
    tenant: str = DEFAULT_TENANT,
    *,
    operators: bool = False,
) -> int:
    """Create, revoke or list clinic ``tenant``'s service keys, in its database, or
    with ``operators`` the platform's operator keys."""
    async with _client(settings) as client:
        db = tenant_database(client, settings.mongodb_db, tenant)
        keys = operator_keys(db) if operators else ServiceKeys(db, tenant)
        try:
            return await _keys(keys, action, name)
        except HubError as exc:
            print(f"hub: {exc.message}", file=sys.stderr)
            return 1


async def _keys(keys: ServiceKeys, action: str, name: str | None) -> int:
    if action == "create":
        assert name is not None
        print(await keys.create(name))
        print(f"hub: key {name} created; it is shown only this once", file=sys.stderr)
    elif action == "revoke":
        assert name is not None
        await keys.revoke(name)
        print(f"hub: key {name} revoked", file=sys.stderr)
    else:
        for doc in await keys.list():
            state = "revoked" if doc.get("revoked_at") else "active"
            print(f"{doc['_id']}\t{state}\tcreated {doc['created_at']:%Y-%m-%d %H:%M}")
    return 0


async def manage_clinics(
    settings: Settings, action: str, tenant_id: str | None, settings_json: str | None
) -> int:
    """``list``, ``get ID``, ``put ID [JSON]`` (the clinic's settings and state, as the
    operator API takes them) and ``remove ID``."""
    async with _client(settings) as client:
        registry = ClinicRegistry(platform_database(client, settings.mongodb_db))
        try:
            if action == "list":
                for clinic in await registry.all():
                    print(f"{clinic.tenant_id}\t{clinic.state}\t{clinic.clinic_name or ''}")
                return 0
            assert tenant_id is not None
            if tenant_id == DEFAULT_TENANT:
                print("hub: default is the hub's own clinic: its settings configure it")
                return 2
            stored = await registry.get(tenant_id)
            if action == "put":
                body = json.loads(settings_json or "{}")
                if not isinstance(body, dict):
                    raise ValueError("the clinic's settings are a JSON object")
                clinic = parse_tenant(tenant_id, body, state=True)
                configured = (issuer.issuer for issuer in settings.oidc_issuers)
                await registry.check_issuer(clinic, configured)
            elif stored is None:
                print(f"hub: no clinic {tenant_id}", file=sys.stderr)
                return 1
            elif action == "get":
                print(json.dumps({"id": tenant_id, "state": stored.state, **stored.settings()}))
                return 0
            else:
                clinic = replace(stored, state=ClinicState.REMOVED)
            await registry.put(clinic)
            await _announce(settings, tenant_id)
            print(f"hub: clinic {tenant_id} is {clinic.state}", file=sys.stderr)
            return 0
        except HubError as exc:
            print(f"hub: {exc.message}", file=sys.stderr)
            return 1


async def _announce(settings: Settings, tenant_id: str) -> None:
    if settings.redis_url is None:
        print("hub: running hubs pick the change up within 30 s", file=sys.stderr)
        return
    redis = redis_connect(settings.redis_url, settings.redis_timeout)
    try:
        await publish_control(redis, Control.CLINIC, tenant_id)
    finally:
        await redis.aclose()
