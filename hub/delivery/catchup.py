"""Catch-up after being offline: what a user missed, across their conversations."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from hub.core.errors import Forbidden
from hub.core.records import Message
from storage.conversations import ConversationRepository
from storage.messages import MessageStore
from storage.revisions import MessageRevisions

SYNC_CONCURRENCY = 16  # queries in flight for one sync; keeps one user from hogging the pool


class Expired(NamedTuple):
    """Seqs of one conversation that the retention policy deleted: a device drops them."""

    conversation_id: str
    seqs: list[int]
    change: int  # the highest change number among these deletions

    def to_wire(self) -> dict[str, object]:
        return {"conversation_id": self.conversation_id, "seqs": self.seqs, "change": self.change}


class Missed(NamedTuple):
    messages: list[Message]
    changed: list[Message]  # edited, retracted or emptied, at or below the device's cursor
    has_more: bool
    expired: list[Expired]  # deleted, at or below the device's cursor


async def missed_messages(
    conversations: ConversationRepository,
    messages: MessageStore,
    revisions: MessageRevisions,
    user_id: str,
    cursors: dict[str, int],
    changes: dict[str, int],
    limit: int,
) -> Missed:
    """Messages after each cursor, in every conversation of the user; at most ``limit``.

    A conversation missing from ``cursors`` counts from the user's stored read cursor,
    so a device that never synced gets what its user has not read, not the whole
    history. Within a conversation the result is a contiguous run of seqs starting
    right after the cursor, so a client that moves its cursors to the highest seq
    received and calls again (while ``has_more``) misses nothing. Ordered by
    conversation, then seq.

    ``changed``: in each conversation of ``cursors``, the messages at or below the
    cursor edited, retracted or emptied by the retention policy (``expired``) after
    the device's ``changes`` number for it (0 when it sends none), in their current
    state, at most ``limit`` in all. ``expired``: in the same conversations, the seqs
    at or below the cursor that the retention policy deleted since then. A device
    keeps the highest ``change`` it received per conversation (from either) and sends
    it next time.
    """
    member_of = await conversations.member_conversation_ids(user_id)
    mine = set(member_of)
    for conversation_id in cursors:
        if conversation_id not in mine:
            await conversations.get(conversation_id)  # NotFound for unknown ids
            raise Forbidden("not a member of this conversation")
    read = await conversations.read_cursors(user_id, [c for c in member_of if c not in cursors])
    starts = {c: cursors.get(c, read.get(c, 0)) for c in member_of}
    gate = asyncio.Semaphore(SYNC_CONCURRENCY)

    async def read_after(conversation_id: str, start: int) -> tuple[list[Message], bool]:
        async with gate:
            return await messages.after(conversation_id, start, limit)

    async def read_changed(
        conversation_id: str, upto: int
    ) -> tuple[list[Message], bool, list[tuple[int, list[int]]]]:
        after = changes.get(conversation_id, 0)
        async with gate:
            edited, more = await revisions.changed_since(conversation_id, after, upto, limit)
            deletions = await revisions.expired_since(conversation_id, after)
        return edited, more, deletions

    synced = sorted((c, upto) for c, upto in cursors.items() if upto > 0)
    results = await asyncio.gather(*(read_after(c, start) for c, start in sorted(starts.items())))
    found = await asyncio.gather(*(read_changed(c, upto) for c, upto in synced))
    out, has_more = _within(results, limit)
    changed, more_changed = _within([(edited, more) for edited, more, _ in found], limit)
    shown: dict[str, list[Message]] = {}
    for message in changed:
        shown.setdefault(message.conversation_id, []).append(message)
    expired = []
    for (conversation_id, upto), (edited, more, deletions) in zip(synced, found, strict=True):
        given = shown.get(conversation_id, [])
        if more or len(given) < len(edited):
            # Edits cut short: deletions only up to the last change the device gets, so
            # that its change number never passes an edit it has not seen.
            ceiling = given[-1].change if given else changes.get(conversation_id, 0)
            deletions = [(number, seqs) for number, seqs in deletions if number <= ceiling]
        seqs = sorted({seq for _, each in deletions for seq in each if seq <= upto})
        if seqs:
            change = max(number for number, _ in deletions)
            expired.append(Expired(conversation_id, seqs, change))
    return Missed(out, changed, has_more or more_changed, expired)


def _within(results: list[tuple[list[Message], bool]], limit: int) -> tuple[list[Message], bool]:
    """The batches one after the other, cut at ``limit``; and whether anything is left."""
    out: list[Message] = []
    has_more = False
    for batch, more in results:
        room = limit - len(out)
        if room <= 0:
            has_more = has_more or bool(batch)
            continue
        out.extend(batch[:room])
        has_more = has_more or more or len(batch) > room
    return out, has_more
