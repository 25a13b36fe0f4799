"""Service API keys for clinic back-ends: stored hashed (libpass), shown once, revocable.

A key reads ``hubk.<name>.<secret>``, or ``hubk.<tenant>.<name>.<secret>`` for a clinic
other than ``default``: the key says which clinic's database holds it, and is checked
there only. The platform's operator keys are the same, as ``hubo.<name>.<secret>`` in
the platform's database (``operator_keys``). Only a PBKDF2-SHA256 hash of the secret is stored.
Verification re-reads the key's document on every call, so a revocation takes effect at
once in every hub process; the (deliberately slow) hash check is cached per process for
keys that already verified against the same stored hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from typing import Any

from passlib.hash import pbkdf2_sha256
from pymongo.asynchronous.database import AsyncDatabase

from hub.core import clock
from hub.core.errors import Conflict, NotFound, Unauthorized
from hub.core.tenants import DEFAULT_TENANT, TENANT_PATTERN
from storage import names
from storage.mongo import mongo_errors

KEY_PREFIX = "hubk"
OPERATOR_KEY_PREFIX = "hubo"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _split(key: str, prefix: str = KEY_PREFIX) -> tuple[str, str, str]:
    """``(tenant, name, secret)`` of a key; Unauthorized if it is not of a key's form."""
    parts = key.split(".")
    if len(parts) == 3:
        parts.insert(1, DEFAULT_TENANT)
    if (
        len(parts) != 4
        or parts[0] != prefix
        or not TENANT_PATTERN.fullmatch(parts[1])
        or not NAME_PATTERN.fullmatch(parts[2])
    ):
        raise Unauthorized("invalid service key")
    return parts[1], parts[2], parts[3]


def key_tenant(key: object) -> str:
    """The clinic a key says it belongs to (its database then says if it does)."""
    if not isinstance(key, str) or len(key) > 256:
        raise Unauthorized("a service key is required")
    return _split(key)[0]


def operator_keys(platform: AsyncDatabase[Any]) -> ServiceKeys:
    """The platform operators' keys (``/api/v1/clinics``), not any clinic's."""
    return ServiceKeys(platform, prefix=OPERATOR_KEY_PREFIX, collection=names.OPERATOR_KEYS)


class ServiceKeys:
    def __init__(
        self,
        db: AsyncDatabase[Any],
        tenant: str = DEFAULT_TENANT,
        *,
        prefix: str = KEY_PREFIX,
        collection: str = names.SERVICE_KEYS,
    ) -> None:
        self._tenant = tenant
        self._prefix = prefix
        self._keys = db[collection]
        self._verified: dict[str, str] = {}  # sha256(key) -> stored hash it matched

    async def create(self, name: str) -> str:
        """Create key ``name`` and return it; the secret is not stored and cannot be shown again.

        Conflict if an active key has that name (revoke it first to rotate).
        """
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError("key name: 1-64 letters, digits, _ or -")
        secret = secrets.token_urlsafe(32)
        digest = await asyncio.to_thread(pbkdf2_sha256.hash, secret)
        with mongo_errors():
            result = await self._keys.update_one(
                {"_id": name, "revoked_at": {"$ne": None}},
                {"$set": {"hash": digest, "created_at": clock.now(), "revoked_at": None}},
            )
            if result.matched_count == 0:
                existing = await self._keys.find_one({"_id": name})
                if existing is not None:
                    raise Conflict(f"key {name} exists; revoke it first")
                await self._keys.insert_one(
                    {
                        "_id": name,
                        "hash": digest,
                        "created_at": clock.now(),
                        "revoked_at": None,
                    }
                )
        if self._tenant == DEFAULT_TENANT:
            return f"{self._prefix}.{name}.{secret}"
        return f"{self._prefix}.{self._tenant}.{name}.{secret}"

    async def revoke(self, name: str) -> None:
        with mongo_errors():
            result = await self._keys.update_one(
                {"_id": name, "revoked_at": None}, {"$set": {"revoked_at": clock.now()}}
            )
        if result.matched_count == 0:
            raise NotFound(f"no active key named {name}")

    async def list(self) -> list[dict[str, Any]]:
        with mongo_errors():
            docs = await self._keys.find({}, {"hash": False}).sort("_id").to_list(length=None)
        return docs

    async def verify(self, key: object) -> str:
        """Return the key's name; Unauthorized if unknown, revoked or wrong."""
        if not isinstance(key, str) or len(key) > 256:
            raise Unauthorized("a key is required")
        tenant, name, secret = _split(key, self._prefix)
        if tenant != self._tenant:
            raise Unauthorized("unknown or revoked service key")
        with mongo_errors():
            doc = await self._keys.find_one({"_id": name})
        if doc is None or doc.get("revoked_at") is not None:
            raise Unauthorized("unknown or revoked service key")
        fingerprint = hashlib.sha256(key.encode()).hexdigest()
        if self._verified.get(fingerprint) == doc["hash"]:
            return name
        if not await asyncio.to_thread(pbkdf2_sha256.verify, secret, doc["hash"]):
            raise Unauthorized("unknown or revoked service key")
        self._verified[fingerprint] = doc["hash"]
        return name
