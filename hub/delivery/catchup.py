"""Catch-up after being offline: what a user missed, across their conversations."""

from __future__ import annotations

import asyncio

from hub.core.errors import Forbidden
from hub.core.records import Message
from storage.conversations import ConversationRepository
from storage.messages import MessageStore

SYNC_CONCURRENCY = 16  # queries in flight for one sync; keeps one user from hogging the pool


async def missed_messages(
    conversations: ConversationRepository,
    messages: MessageStore,
    user_id: str,
    cursors: dict[str, int],
    limit: int,
) -> tuple[list[Message], bool]:
    """Messages after each cursor, in every conversation of the user; at most ``limit``.

    A conversation missing from ``cursors`` counts from the user's stored read cursor,
    so a device that never synced gets what its user has not read, not the whole
    history. Within a conversation the result is a contiguous run of seqs starting
    right after the cursor, so a client that moves its cursors to the highest seq
    received and calls again (while ``has_more``) misses nothing. Ordered by
    conversation, then seq.
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

    results = await asyncio.gather(*(read_after(c, start) for c, start in sorted(starts.items())))
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
