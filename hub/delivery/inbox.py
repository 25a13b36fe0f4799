"""The clinic's inbox: patients write to a pool; its staff claim, release and transfer.

What it promises:

* A patient opens one conversation per pool (``conversation:open {pool_id}``); every
  member of the pool sees it in the pool's inbox and gets its messages.
* One owner at a time: of two staff claiming at once, on any hubs, one wins and the
  other is told who has it.
* Every change of owner or pool is told to the pool's members (``inbox:updated``) and
  recorded in the audit trail. The patient sees who joined (a message from the
  clinic: "Rosa Alvarez joined the conversation."), never a transfer's note.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any

import socketio

from hub.core import clock
from hub.core.auth import CLINIC_ROLES
from hub.core.errors import BadRequest, Conflict, Forbidden, NotFound
from hub.core.metrics import Metrics
from hub.core.protocol import Push, iso
from hub.core.records import Conversation
from hub.core.rooms import DEFAULT_ROOMS, Rooms
from hub.delivery.closed import CLINIC_SENDER
from storage.audit import AuditLog
from storage.conversations import ConversationRepository
from storage.directory import Directory
from storage.inbox import InboxStore
from storage.messages import MessageStore
from storage.pools import PoolStore

log = logging.getLogger("hub.inbox")


class Inbox:
    def __init__(
        self,
        sio: socketio.AsyncServer,
        conversations: ConversationRepository,
        routes: InboxStore,
        pools: PoolStore,
        directory: Directory,
        messages: MessageStore,
        audit: AuditLog,
        clinic_name: str,
        metrics: Metrics,
        rooms: Rooms = DEFAULT_ROOMS,
    ) -> None:
        self._rooms = rooms
        self._metrics = metrics
        self._sio = sio
        self._conversations = conversations
        self._routes = routes
        self._pools = pools
        self._directory = directory
        self._messages = messages
        self._audit = audit
        self._clinic_name = clinic_name

    async def open(self, patient_id: str, pool_id: str) -> tuple[Conversation, int]:
        await self._pools.get(pool_id)  # NotFound for a pool that does not exist
        return await self._conversations.open_with_pool(patient_id, pool_id)

    async def listing(self, pool_id: str, state: str, user_id: str) -> list[dict[str, Any]]:
        """The pool's conversations for one of its members, longest waiting first:
        the patient (with name), the owner, the last message and the waiting time."""
        if not await self._pools.is_member(pool_id, user_id):
            raise Forbidden("not a member of this pool")
        routes = await self._routes.listing(pool_id, state, user_id)
        people = await self._directory.people(
            [r["patient_id"] for r in routes] + [r["owner_id"] for r in routes if r["owner_id"]]
        )
        now = clock.now()
        items = []
        for route in routes:
            conversation_id = route["_id"]
            last, _ = await self._messages.history(conversation_id, None, 1)
            waiting = route.get("waiting_since")
            if waiting is not None and waiting.tzinfo is None:
                waiting = waiting.replace(tzinfo=UTC)
            items.append(
                {
                    "conversation_id": conversation_id,
                    "pool_id": route["pool_id"],
                    "patient": people[route["patient_id"]],
                    "owner": people[route["owner_id"]] if route["owner_id"] else None,
                    "last_message": last[0].to_wire() if last else None,
                    "waiting_since": iso(waiting) if waiting else None,
                    "waiting_seconds": int((now - waiting).total_seconds()) if waiting else 0,
                    "urgent": bool(route.get("urgent")),
                }
            )
        return items

    async def claim(self, conversation_id: str, user_id: str) -> dict[str, Any]:
        route = await self._route_for_staff(conversation_id, user_id)
        won, after = await self._routes.claim(conversation_id, user_id)
        if not won:
            owner = (after or route).get("owner_id")
            if owner == user_id:
                return await self._wire(after or route)
            name = await self._directory.name_of(owner) if owner else "someone"
            raise Conflict(f"{name} has this conversation")
        assert after is not None
        await self._changed(after, user_id, "claimed", joined=user_id)
        return await self._wire(after)

    async def release(self, conversation_id: str, user_id: str) -> dict[str, Any]:
        await self._route_for_staff(conversation_id, user_id)
        after = await self._routes.release(conversation_id, user_id)
        if after is None:
            raise Conflict("you do not own this conversation")
        await self._changed(after, user_id, "released")
        return await self._wire(after)

    async def routed_to(self, pool_id: str) -> int:
        """How many conversations are routed to the pool."""
        return await self._routes.count_in_pool(pool_id)

    async def hand_back(self, owner_id: str, actor_id: str, pool_id: str | None = None) -> int:
        """Give every conversation ``owner_id`` owns (in ``pool_id`` only, if given)
        back to its pool, unowned: they left the clinic or the pool. Each is audited as
        ``conversation.released`` by ``actor_id`` and announced to the pool; returns how
        many went back."""
        released = 0
        for conversation_id in await self._routes.owned_by(owner_id, pool_id):
            after = await self._routes.release(conversation_id, owner_id)
            if after is not None:  # None: it changed hands meanwhile
                await self._changed(after, actor_id, "released")
                released += 1
        return released

    async def transfer(
        self,
        conversation_id: str,
        user_id: str,
        to_user: str | None,
        to_pool: str | None,
        note: str | None,
    ) -> dict[str, Any]:
        """To a colleague (who owns it at once) or to another pool (unowned there). The
        owner transfers; an unowned conversation any member of its pool."""
        if (to_user is None) == (to_pool is None):
            raise BadRequest("give one of to_user and to_pool")
        route = await self._route_for_staff(conversation_id, user_id)
        if route.get("owner_id") not in (None, user_id):
            raise Conflict("only its owner transfers a claimed conversation")
        if to_user is not None:
            person = (await self._directory.people([to_user]))[to_user]
            if person.get("role") not in CLINIC_ROLES:
                raise BadRequest("to_user: not one of the clinic's people")
        if to_pool is not None:
            await self._pools.get(to_pool)
        after = await self._routes.transfer(
            conversation_id, route.get("owner_id"), to_user, to_pool
        )
        if after is None:
            raise Conflict("the conversation changed hands meanwhile: look again")
        await self._changed(
            after, user_id, "transferred", joined=to_user, note=note, from_pool=route["pool_id"]
        )
        return await self._wire(after)

    async def staff_of(self, conversation: Conversation) -> list[str]:
        """Who of the conversation's audience is the clinic's (by the directory's role):
        the readers of its staff-only notes. Someone whose role is unknown is not."""
        audience = await self._conversations.audience(conversation)
        people = await self._directory.people(list(audience))
        return [u for u in audience if people[u].get("role") in CLINIC_ROLES]

    async def message_stored(self, conversation: Conversation, sender_id: str) -> None:
        """Keep the waiting time: a patient's message starts it, staff's answer ends it."""
        if not conversation.routed:
            return
        if sender_id in conversation.member_ids:
            await self._routes.patient_wrote(conversation.conversation_id, clock.now())
            return
        before = await self._routes.staff_answered(conversation.conversation_id)
        waiting = before.get("waiting_since") if before else None
        if before is not None and waiting is not None:
            waiting = waiting if waiting.tzinfo else waiting.replace(tzinfo=UTC)
            self._metrics.first_response_seconds.labels(before["pool_id"]).observe(
                (clock.now() - waiting).total_seconds()
            )

    async def _route_for_staff(self, conversation_id: str, user_id: str) -> dict[str, Any]:
        route = await self._routes.route(conversation_id)
        if route is None:
            raise NotFound("no such conversation in an inbox")
        if route.get("owner_id") != user_id and not await self._pools.is_member(
            route["pool_id"], user_id
        ):
            raise Forbidden("not a member of this conversation's pool")
        return route

    async def _changed(
        self,
        route: dict[str, Any],
        actor_id: str,
        action: str,
        *,
        joined: str | None = None,
        note: str | None = None,
        from_pool: str | None = None,
    ) -> None:
        conversation_id = route["_id"]
        detail: dict[str, Any] = {"pool_id": route["pool_id"], "owner_id": route["owner_id"]}
        if from_pool is not None:
            detail["from_pool"] = from_pool
        if note:
            detail["note"] = note  # staff only: the audit trail and the pools' members
        await self._audit.record(
            actor_id, f"conversation.{action}", conversation_id=conversation_id, detail=detail
        )
        log.info("conversation=%s %s by user=%s", conversation_id, action, actor_id)
        event = {"action": action, "by": actor_id, **await self._wire(route)}
        if note:
            event["note"] = note
        pools = {route["pool_id"], from_pool} - {None}
        staff: set[str] = {actor_id}
        for pool_id in pools:
            staff.update((await self._pools.get(pool_id))["member_ids"])
        if route["owner_id"]:
            staff.add(route["owner_id"])
        await self._sio.emit(Push.INBOX_UPDATED, event, to=[self._rooms.user(u) for u in staff])
        if joined is not None:
            await self._announce_joined(route, joined)

    async def _announce_joined(self, route: dict[str, Any], user_id: str) -> None:
        """What the patient sees of it: a message from the clinic."""
        person = (await self._directory.people([user_id]))[user_id]
        who = f"{person['name']}, {person['title']}" if person.get("title") else person["name"]
        conversation = await self._conversations.get(route["_id"])
        message, created = await self._messages.send(
            conversation.conversation_id,
            CLINIC_SENDER,
            f"joined:{user_id}:{route.get('claimed_at') or route['updated_at']}",
            f"{who} joined the conversation.",
            sender_name=self._clinic_name,
        )
        if created:
            audience = await self._conversations.audience(conversation)
            await self._sio.emit(
                Push.MESSAGE_NEW,
                {"message": message.to_wire()},
                to=[self._rooms.user(u) for u in audience],
            )

    async def _wire(self, route: dict[str, Any]) -> dict[str, Any]:
        owner = route.get("owner_id")
        return {
            "conversation_id": route["_id"],
            "pool_id": route["pool_id"],
            "owner": (await self._directory.people([owner]))[owner] if owner else None,
        }
