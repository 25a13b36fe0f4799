"""Messages: durable, ordered, exactly-once per ``client_id``, written by group commit.

Delivery guarantees (what ``message:send`` promises):

* A message is acknowledged only after MongoDB acknowledged its insert.
* ``seq`` is per conversation, starts at 1, strictly increasing, without gaps. It is
  allocated in-process from a cache of the last committed seq and made safe across
  hub processes by the unique index on ``(conversation_id, seq)``: a writer whose
  cache is stale hits that index, refreshes and retries. The steady state costs no
  extra read.
* The same ``client_id`` from the same sender in the same conversation is one message:
  a resend returns the stored original (``created`` is False).
* Sends that arrive while a write is in flight are written together in the next one
  (one ordered ``insert_many`` of the messages of many conversations, and nothing
  else), so throughput does not fall to one write per round trip. The messages are
  the only record of a conversation's seqs: its last seq is read from the
  ``(conversation_id, seq)`` index (:func:`last_seqs`).
* If the outcome of a write is unknown (timeout, lost connection), the senders get
  ``unavailable``; the message may or may not be stored, and a resend with the same
  ``client_id`` settles it without a duplicate.
* A send is answered within ``timeout`` seconds of its own arrival, however long the
  writes queued before it hang: past its deadline it is answered ``unavailable``, and
  taken out of the queue if its write has not started.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from hub.core import clock
from hub.core.errors import HubError, Unavailable
from hub.core.metrics import Metrics
from hub.core.records import Message
from storage import names
from storage.mongo import DUPLICATE_KEY, mongo_errors

log = logging.getLogger(__name__)

MAX_ROUNDS = 8
SEQ_CACHE_LIMIT = 100_000


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass(slots=True)
class _Pending:
    conversation_id: str
    sender_id: str
    client_id: str
    body: str
    created_at: datetime
    future: asyncio.Future[tuple[Message, bool]]
    attachments: tuple[dict[str, Any], ...] = ()
    sender_name: str | None = None
    urgent: bool = False
    message_id: ObjectId = field(default_factory=ObjectId)
    seq: int = 0

    def document(self) -> dict[str, Any]:
        doc = {
            "_id": self.message_id,
            "conversation_id": self.conversation_id,
            "seq": self.seq,
            "sender_id": self.sender_id,
            "client_id": self.client_id,
            "body": self.body,
            "created_at": self.created_at,
        }
        if self.attachments:
            doc["attachments"] = list(self.attachments)
        if self.sender_name:
            doc["sender_name"] = self.sender_name
        if self.urgent:
            doc["urgent"] = True
        return doc

    def message(self) -> Message:
        return Message(
            message_id=str(self.message_id),
            conversation_id=self.conversation_id,
            seq=self.seq,
            sender_id=self.sender_id,
            client_id=self.client_id,
            body=self.body,
            created_at=self.created_at,
            attachments=self.attachments,
            sender_name=self.sender_name,
            urgent=self.urgent,
        )


class MessageStore:
    """Stores and reads messages. Call :meth:`start` before sending, :meth:`close` at the end."""

    def __init__(
        self,
        db: AsyncDatabase[Any],
        max_batch: int = 512,
        metrics: Metrics | None = None,
        timeout: float = 5.0,
        collection: str = names.MESSAGES,
    ) -> None:
        self._timeout = timeout
        self._metrics = metrics or Metrics()
        # names.STAFF_NOTES for the staff-only notes: apart, so that no query for a
        # patient can ever return one, and their seqs leave no gaps in the messages'.
        self._messages = db[collection]
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._last_seq: dict[str, int] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self.batches_written = 0
        self.messages_written = 0  # for the operator's view of the clinic (its activity)
        self.last_written_at: datetime | None = None

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="message-group-commit")

    async def close(self) -> None:
        """Write what is queued, then stop the flusher."""
        self._closing = True
        self._wakeup.set()
        if self._flusher is not None:
            await self._flusher

    async def send(
        self,
        conversation_id: str,
        sender_id: str,
        client_id: str,
        body: str,
        attachments: tuple[dict[str, Any], ...] = (),
        sender_name: str | None = None,
        urgent: bool = False,
    ) -> tuple[Message, bool]:
        """Store a message; return it and whether it is new (False for a resend).

        Raises Unavailable when MongoDB did not acknowledge the write.
        """
        if self._closing or self._flusher is None:
            raise Unavailable("the hub is shutting down")
        future: asyncio.Future[tuple[Message, bool]] = asyncio.get_running_loop().create_future()
        item = _Pending(
            conversation_id,
            sender_id,
            client_id,
            body,
            clock.now(),
            future,
            attachments,
            sender_name,
            urgent,
        )
        self._queue.append(item)
        self._wakeup.set()
        try:
            # Shielded: a write under way settles the future even after the deadline.
            return await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError:
            if item in self._queue:  # its write has not started: it never will
                self._queue.remove(item)
            else:  # its write settles it later; nobody waits for that answer any more
                future.add_done_callback(_consume)
            log.warning(
                "message send answered unavailable after %.1fs: its write is "
                "still queued or under way",
                self._timeout,
            )
            raise Unavailable() from None

    async def history(
        self, conversation_id: str, before_seq: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """Up to ``limit`` messages before ``before_seq`` (the newest when None), ascending."""
        query: dict[str, Any] = {"conversation_id": conversation_id}
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        with mongo_errors():
            docs = await self._messages.find(query).sort("seq", -1).limit(limit + 1).to_list(None)
        has_more = len(docs) > limit
        return [Message.from_doc(d) for d in reversed(docs[:limit])], has_more

    async def after(
        self, conversation_id: str, after_seq: int, limit: int
    ) -> tuple[list[Message], bool]:
        """Up to ``limit`` messages with seq above ``after_seq``, ascending."""
        with mongo_errors():
            docs = (
                await self._messages.find(
                    {"conversation_id": conversation_id, "seq": {"$gt": after_seq}}
                )
                .sort("seq", 1)
                .limit(limit + 1)
                .to_list(None)
            )
        return [Message.from_doc(d) for d in docs[:limit]], len(docs) > limit

    async def last_seq(self, conversation_id: str) -> int:
        """The highest stored seq of the conversation (0 if empty), read from MongoDB."""
        return (await last_seqs(self._messages, [conversation_id])).get(conversation_id, 0)

    # -- group commit ----------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                try:
                    await self._write(batch)
                except Exception as exc:  # never let the flusher die: fail this batch only
                    log.exception("message batch failed")
                    error = exc if isinstance(exc, HubError) else Unavailable()
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(error)
            if self._closing:
                return

    async def _write(self, batch: list[_Pending]) -> None:
        pending = batch
        for _ in range(MAX_ROUNDS):
            if not pending:
                return
            await self._load_seqs({item.conversation_id for item in pending})
            ordered = self._plan(pending)
            try:
                with self._metrics.mongo_write("messages"):
                    await self._messages.insert_many(
                        [item.document() for item in ordered], ordered=True
                    )
            except BulkWriteError as exc:
                pending = await self._recover(exc, ordered, pending)
                continue
            except PyMongoError as exc:
                self._forget(pending)
                self._fail(pending, Unavailable())
                log.warning("message write failed: %s", type(exc).__name__)
                return
            self.batches_written += 1
            self.messages_written += len(ordered)
            self.last_written_at = clock.now()
            self._commit(pending)
            return
        self._forget(pending)
        log.warning(
            "message write gave up after %d rounds: %d messages left", MAX_ROUNDS, len(pending)
        )
        self._fail(pending, Unavailable("could not store the message, try again"))

    def _plan(self, pending: list[_Pending]) -> list[_Pending]:
        """Assign seqs; the batch in the order it is written, conversation by conversation."""
        by_conversation: dict[str, list[_Pending]] = {}
        for item in pending:
            by_conversation.setdefault(item.conversation_id, []).append(item)
        ordered: list[_Pending] = []
        for conversation_id, items in by_conversation.items():
            seq = self._last_seq[conversation_id]
            for item in items:
                seq += 1
                item.seq = seq
                ordered.append(item)
        return ordered

    async def _recover(
        self,
        exc: BulkWriteError,
        ordered: list[_Pending],
        pending: list[_Pending],
    ) -> list[_Pending]:
        """After a partial ordered insert: settle what was written, return what is left."""
        errors = cast(list[dict[str, Any]], exc.details.get("writeErrors") or [])
        if not errors:
            # Not a per-document error: the outcome of the rest is unknown.
            self._forget(pending)
            self._fail(pending, Unavailable())
            log.warning("message write failed: %s", exc.details.get("writeConcernErrors"))
            return []
        failed_at = int(errors[0]["index"])
        written = ordered[:failed_at]
        self._commit(written)
        done = {id(item) for item in written}
        failed = ordered[failed_at]
        if errors[0].get("code") == DUPLICATE_KEY:
            key = errors[0].get("keyPattern") or {}
            if "client_id" in key:
                # A resend. After a reconnect, a client's whole outbox comes again:
                # settle every resend of what is left in one read, not one per round.
                left = [item for item in pending if id(item) not in done]
                done |= await self._settle_resends(left)
            else:
                # Another process took this seq: our cache is stale.
                log.info(
                    "message seq taken in conversation=%s: reloading its last seq",
                    failed.conversation_id,
                )
                self._last_seq.pop(failed.conversation_id, None)
        else:
            self._last_seq.pop(failed.conversation_id, None)
            self._fail([failed], Unavailable())
            log.warning("message insert refused with code %s", errors[0].get("code"))
            done.add(id(failed))
        return [item for item in pending if id(item) not in done]

    async def _settle_resends(self, items: list[_Pending]) -> set[int]:
        """Answer every item already stored (a resend) with the stored message; returns
        the ids of the items settled, so the caller writes only the others."""
        query = {
            "$or": [
                {
                    "conversation_id": item.conversation_id,
                    "sender_id": item.sender_id,
                    "client_id": item.client_id,
                }
                for item in items
            ]
        }
        try:
            docs = await self._messages.find(query).to_list(None)
        except PyMongoError as exc:
            log.warning("message resends could not be read back: %s", type(exc).__name__)
            self._fail(items, Unavailable())
            return {id(item) for item in items}
        stored = {(d["conversation_id"], d["sender_id"], d["client_id"]): d for d in docs}
        settled: set[int] = set()
        for item in items:
            doc = stored.get((item.conversation_id, item.sender_id, item.client_id))
            if doc is not None:
                if not item.future.done():
                    item.future.set_result((Message.from_doc(doc), False))
                settled.add(id(item))
        return settled

    async def _load_seqs(self, conversation_ids: set[str]) -> None:
        missing = [c for c in conversation_ids if c not in self._last_seq]
        if missing:
            if len(self._last_seq) + len(missing) > SEQ_CACHE_LIMIT:
                self._last_seq.clear()  # a cold cache costs one read per conversation
                missing = list(conversation_ids)
            found = await last_seqs(self._messages, missing)
            self._last_seq.update({c: found.get(c, 0) for c in missing})

    def _commit(self, written: list[_Pending]) -> None:
        for item in written:
            if item.seq > self._last_seq.get(item.conversation_id, 0):
                self._last_seq[item.conversation_id] = item.seq
            if not item.future.done():
                item.future.set_result((item.message(), True))

    def _forget(self, items: list[_Pending]) -> None:
        for item in items:
            self._last_seq.pop(item.conversation_id, None)

    @staticmethod
    def _fail(items: list[_Pending], error: HubError) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)


async def last_seqs(messages: AsyncCollection[Any], conversation_ids: list[str]) -> dict[str, int]:
    """The highest stored seq of each conversation that has messages, in one query: the
    newest entry per conversation of the ``(conversation_id, seq)`` index (the sort is
    that index backwards, so MongoDB can answer with one index entry per conversation)."""
    if not conversation_ids:
        return {}
    with mongo_errors():
        rows = await (await messages.aggregate(last_seqs_pipeline(conversation_ids))).to_list(None)
    return {row["_id"]: int(row["seq"]) for row in rows}


def last_seqs_pipeline(conversation_ids: list[str]) -> list[dict[str, Any]]:
    """The aggregation of :func:`last_seqs` (the workers run it with PyMongo's
    synchronous client)."""
    return [
        {"$match": {"conversation_id": {"$in": conversation_ids}}},
        {"$sort": {"conversation_id": -1, "seq": -1}},
        {"$group": {"_id": "$conversation_id", "seq": {"$first": "$seq"}}},
    ]
