"""Conversations and read cursors.

A conversation's member set never changes after it is opened, which is what lets
every hub process cache membership (:class:`ConversationRepository.get`) and answer
``message:send`` without reading MongoDB first. A conversation a patient opens with a
pool (``routed``) has the patient as its only member; the staff who may read and
answer it follow its routing (``storage/inbox.py``), which is read fresh each time.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from hub.core import clock
from hub.core.errors import Forbidden, NotFound, Unavailable
from hub.core.records import Conversation
from storage import names
from storage.inbox import InboxStore
from storage.messages import last_seqs
from storage.mongo import mongo_errors
from storage.pools import PoolStore


def conversation_id_for(member_ids: tuple[str, ...], appointment_id: str | None) -> str:
    """The id is derived from the member set and appointment, so opening is idempotent."""
    key = "\x1f".join(member_ids) + "\x1e" + (appointment_id or "")
    return "c_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def new_conversation(
    members: tuple[str, ...], appointment_id: str | None, now: datetime
) -> dict[str, Any]:
    """The fields a conversation is created with (everything but ``_id``)."""
    return {
        "member_ids": list(members),
        "appointment_id": appointment_id,
        "created_at": now,
    }


def _from_doc(doc: dict[str, Any]) -> Conversation:
    return Conversation(
        conversation_id=doc["_id"],
        member_ids=tuple(doc["member_ids"]),
        appointment_id=doc.get("appointment_id"),
        created_at=doc["created_at"],
        routed=bool(doc.get("routed")),
    )


class ConversationRepository:
    """Conversations, their membership (cached in-process) and members' read cursors."""

    def __init__(
        self,
        db: AsyncDatabase[Any],
        cache_size: int = 10_000,
        inbox: InboxStore | None = None,
        pools: PoolStore | None = None,
    ) -> None:
        self._inbox = inbox or InboxStore(db)
        self._pools = pools or PoolStore(db)
        self._conversations = db[names.CONVERSATIONS]
        self._cursors = db[names.READ_CURSORS]
        self._messages = db[names.MESSAGES]  # read only: the conversations' last seqs
        self._namespace = f"{db.name}.{names.CONVERSATIONS}"
        self._cache: OrderedDict[str, Conversation] = OrderedDict()
        self._cache_size = cache_size

    async def open(
        self, member_ids: set[str], appointment_id: str | None
    ) -> tuple[Conversation, int]:
        """Return the conversation of exactly these members (and appointment), creating it once.

        Returns the conversation and its last seq. Concurrent opens of the same set,
        from any hub process, end with one document.
        """
        members = tuple(sorted(member_ids))
        conversation_id = conversation_id_for(members, appointment_id)
        now = clock.now()
        for _ in range(3):  # an upsert that races another one may fail once on _id
            try:
                doc = await self._conversations.find_one_and_update(
                    {"_id": conversation_id},
                    {"$setOnInsert": new_conversation(members, appointment_id, now)},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                # SecantusDB was seen answering null to one of two racing upserts.
                if doc is not None:
                    break
            except DuplicateKeyError:
                continue
            except PyMongoError as exc:
                raise Unavailable() from exc
        else:
            raise Unavailable("could not open the conversation, try again")
        conversation = _from_doc(doc)
        self._remember(conversation)
        seqs = await last_seqs(self._messages, [conversation_id])
        return conversation, seqs.get(conversation_id, 0)

    def ensure_op(
        self, member_ids: set[str], appointment_id: str | None, now: datetime
    ) -> UpdateOne:
        """A client bulk write op that creates the conversation unless it exists."""
        members = tuple(sorted(member_ids))
        return UpdateOne(
            {"_id": conversation_id_for(members, appointment_id)},
            {"$setOnInsert": new_conversation(members, appointment_id, now)},
            upsert=True,
            namespace=self._namespace,
        )

    async def get(self, conversation_id: str) -> Conversation:
        """The conversation, from the cache when possible; NotFound if there is none."""
        cached = self._cache.get(conversation_id)
        if cached is not None:
            self._cache.move_to_end(conversation_id)
            return cached
        with mongo_errors():
            doc = await self._conversations.find_one({"_id": conversation_id})
        if doc is None:
            raise NotFound("no such conversation")
        conversation = _from_doc(doc)
        self._remember(conversation)
        return conversation

    async def require_member(self, conversation_id: str, user_id: str) -> Conversation:
        """The conversation if ``user_id`` belongs to it (for a routed one: its pool's
        members and its owner too); NotFound or Forbidden otherwise."""
        conversation = await self.get(conversation_id)
        if user_id in conversation.member_ids:
            return conversation
        if conversation.routed:
            route = await self._inbox.route(conversation_id)
            if route is not None and (
                route.get("owner_id") == user_id
                or await self._pools.is_member(route["pool_id"], user_id)
            ):
                return conversation
        raise Forbidden("not a member of this conversation")

    async def audience(self, conversation: Conversation) -> tuple[str, ...]:
        """Who gets a conversation's events: its members, and for a routed one the
        members of its current pool and its owner."""
        if not conversation.routed:
            return conversation.member_ids
        route = await self._inbox.route(conversation.conversation_id)
        if route is None:
            return conversation.member_ids
        staff: list[str] = []
        try:
            staff = list((await self._pools.get(route["pool_id"]))["member_ids"])
        except NotFound:
            pass
        if route.get("owner_id"):
            staff.append(route["owner_id"])
        return tuple(dict.fromkeys([*conversation.member_ids, *staff]))

    async def open_with_pool(self, patient_id: str, pool_id: str) -> tuple[Conversation, int]:
        """The patient's conversation with a pool, opened once (and routed to it)."""
        conversation_id = conversation_id_for((patient_id,), f"pool:{pool_id}")
        now = clock.now()
        with mongo_errors():
            try:
                await self._conversations.update_one(
                    {"_id": conversation_id},
                    {
                        "$setOnInsert": {
                            **new_conversation((patient_id,), None, now),
                            "routed": True,
                        }
                    },
                    upsert=True,
                )
            except DuplicateKeyError:
                pass  # opened at the same moment by another of the patient's devices
        await self._inbox.open(conversation_id, patient_id, pool_id)
        conversation = await self.get(conversation_id)
        seqs = await last_seqs(self._messages, [conversation_id])
        return conversation, seqs.get(conversation_id, 0)

    async def list_for(self, user_id: str) -> list[dict[str, Any]]:
        """The user's conversations with last_seq and the user's read_seq, newest first:
        three queries, however many conversations (four: and those the user owns in a
        pool's inbox)."""
        owned = await self._inbox.owned_by(user_id)
        with mongo_errors():
            docs = (
                await self._conversations.find(
                    {"$or": [{"member_ids": user_id}, {"_id": {"$in": owned}}]}
                )
                .sort("created_at", -1)
                .to_list(length=1000)
            )
        ids = [d["_id"] for d in docs]
        read, last = await asyncio.gather(
            self.read_cursors(user_id, ids), last_seqs(self._messages, ids)
        )
        out = []
        for doc in docs:
            conversation = _from_doc(doc)
            self._remember(conversation)
            wire = conversation.to_wire(last.get(conversation.conversation_id, 0))
            wire["read_seq"] = read.get(conversation.conversation_id, 0)
            out.append(wire)
        return out

    async def member_conversation_ids(self, user_id: str) -> list[str]:
        with mongo_errors():
            docs = await self._conversations.find({"member_ids": user_id}, {"_id": True}).to_list(
                length=None
            )
        return [doc["_id"] for doc in docs]

    async def contacts_of(self, user_id: str) -> set[str]:
        """Everyone who shares at least one conversation with ``user_id``."""
        with mongo_errors():
            contacts = await self._conversations.distinct("member_ids", {"member_ids": user_id})
        return {c for c in contacts if c != user_id}

    async def read_cursors(self, user_id: str, conversation_ids: list[str]) -> dict[str, int]:
        with mongo_errors():
            docs = await self._cursors.find(
                {"user_id": user_id, "conversation_id": {"$in": conversation_ids}}
            ).to_list(length=None)
        return {doc["conversation_id"]: int(doc["seq"]) for doc in docs}

    async def mark_read(self, conversation_id: str, user_id: str, seq: int) -> bool:
        """Move the user's read cursor forward to ``seq``; True if it moved.

        The cursor never moves back: a lower or equal seq changes nothing.
        """
        for _ in range(2):  # first read of a conversation may race an upsert once
            try:
                before = await self._cursors.find_one_and_update(
                    {"user_id": user_id, "conversation_id": conversation_id},
                    {"$max": {"seq": seq}, "$set": {"updated_at": clock.now()}},
                    upsert=True,
                    return_document=ReturnDocument.BEFORE,
                )
            except DuplicateKeyError:
                continue
            except PyMongoError as exc:
                raise Unavailable() from exc
            previous = int(before["seq"]) if before else 0
            return previous < seq
        raise Unavailable("could not store the read cursor, try again")

    def _remember(self, conversation: Conversation) -> None:
        self._cache[conversation.conversation_id] = conversation
        self._cache.move_to_end(conversation.conversation_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
