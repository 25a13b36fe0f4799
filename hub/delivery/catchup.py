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


class Missed(NamedTuple):
    messages: list[Message]
    changed: list[Message]  # edited or retracted, at or below the device's cursor
    has_more: bool


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
    cursor edited or retracted after the device's ``changes`` number for it (0 when
    it sends none), in their current state, at most ``limit`` in all; a device keeps
    the highest ``change`` it received per conversation and sends it next time.
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

    async def read_changed(conversation_id: str, upto: int) -> tuple[list[Message], bool]:
        async with gate:
            return await revisions.changed_since(
                conversation_id, changes.get(conversation_id, 0), upto, limit
            )

    results = await asyncio.gather(*(read_after(c, start) for c, start in sorted(starts.items())))
    edits = await asyncio.gather(
        *(read_changed(c, upto) for c, upto in sorted(cursors.items()) if upto > 0)
    )
    out, has_more = _within(results, limit)
    changed, more_changed = _within(edits, limit)
    return Missed(out, changed, has_more or more_changed)


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
