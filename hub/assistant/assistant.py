"""The consultation assistant: streams Ollama's answers to the doctor, and only to them.

Every generation runs as a background task of this process, holds one of
``HUB_OLLAMA_CONCURRENCY`` slots (a request waits ``HUB_OLLAMA_QUEUE_WAIT`` for one,
then gets ``unavailable``), and ends in exactly one of: its final event
(``assistant:done``, or ``done: true`` on ``assistant:suggestion`` /
``assistant:note``), ``assistant:error``, or silence when a newer suggestion
superseded it (its stream is closed, not left running). Every output is stored with
its model, prompt size and timings, and audited.

The deltas of a stream go to the doctor's devices on other hub processes only while
the doctor has one there (``Presence.elsewhere``, looked up while the model thinks,
and again at most every ``DEVICES_RECHECK`` seconds, in the background). Without that,
every hub read every delta of every other hub off the fan-out channel, only to drop
it. A device that connects to another hub mid-answer may miss deltas for up to that
long; the final event always goes to every hub and carries the whole text.

Auto suggestions run after ``every_segments`` new segments, or ``every_seconds``
after the first segment not yet covered, whichever comes first; the right to
suggest on a range of segments is claimed in MongoDB, so two hub processes never
both answer it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import aclosing
from typing import Any

import socketio

from channels.presence import Presence
from hub.assistant import prompts
from hub.assistant.model import OllamaStream, elapsed_ms
from hub.consultations.cache import Reading
from hub.consultations.consultations import Consultations
from hub.core import clock
from hub.core.errors import AssistantFailed, HubError
from hub.core.metrics import Metrics
from hub.core.protocol import Push
from hub.core.records import Consultation
from hub.core.rooms import DEFAULT_ROOMS, Rooms
from hub.core.settings import AssistantSettings
from hub.core.tasks import TaskGroup
from storage.consultations import TRANSCRIPT_LIMIT

log = logging.getLogger("hub.assistant")

STREAM_EVENT = {
    "answer": Push.ASSISTANT_DELTA,
    "suggestion": Push.ASSISTANT_SUGGESTION,
    "note": Push.ASSISTANT_NOTE,
}
DEVICES_RECHECK = 1.0  # seconds between two looks at where a streaming doctor's devices are


class Assistant:
    def __init__(
        self,
        settings: AssistantSettings,
        consultations: Consultations,
        sio: socketio.AsyncServer,
        model: OllamaStream,
        presence: Presence,
        metrics: Metrics | None = None,
        rooms: Rooms = DEFAULT_ROOMS,
    ) -> None:
        self._rooms = rooms
        self._settings = settings
        self._presence = presence
        self._metrics = metrics or Metrics()
        self._consultations = consultations
        self._store = consultations.store
        self._sio = sio
        self._model = model
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tasks = TaskGroup("assistant")
        self._suggesting: dict[str, asyncio.Task[None]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.in_flight = 0

    # -- what handlers call ---------------------------------------------------------------

    def ask(self, reading: Reading, question: str) -> str:
        """Start answering ``question`` on the consultation and transcript read for it;
        returns the request id the events will carry.

        A reading still to be confirmed is confirmed while the model server works on
        the request: nothing is shown before it is, and a stale one starts the request
        again from MongoDB."""
        request_id = uuid.uuid4().hex
        self._tasks.spawn(
            self._generate("answer", request_id, reading.consultation, question, reading)
        )
        return request_id

    async def segment_added(self, consultation: Consultation, seq: int) -> None:
        """Count a new segment towards the next auto suggestion."""
        if not consultation.auto:
            return
        covered = await self._store.suggested_upto(consultation.consultation_id)
        if seq - covered >= self._settings.every_segments:
            await self._suggest(consultation, seq)
        elif consultation.consultation_id not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[consultation.consultation_id] = loop.call_later(
                self._settings.every_seconds, self._on_timer, consultation, seq
            )

    def configure(self, consultation: Consultation, auto: bool) -> None:
        if not auto:
            self._stop_suggestions(consultation.consultation_id)

    def end(self, consultation: Consultation) -> str:
        """Stop suggestions and stream the draft note; returns its request id."""
        self._stop_suggestions(consultation.consultation_id)
        request_id = uuid.uuid4().hex
        self._tasks.spawn(self._generate("note", request_id, consultation))
        return request_id

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self._tasks.close(timeout=2.0)
        await self._model.close()

    # -- auto suggestions -----------------------------------------------------------------

    def _on_timer(self, consultation: Consultation, seq: int) -> None:
        self._timers.pop(consultation.consultation_id, None)
        self._tasks.spawn(self._suggest_latest(consultation))

    async def _suggest_latest(self, consultation: Consultation) -> None:
        segments = await self._store.segments(
            consultation.consultation_id,
            await self._store.suggested_upto(consultation.consultation_id),
        )
        if segments:
            await self._suggest(consultation, segments[-1]["seq"])

    async def _suggest(self, consultation: Consultation, seq: int) -> None:
        cid = consultation.consultation_id
        timer = self._timers.pop(cid, None)
        if timer is not None:
            timer.cancel()
        if not await self._store.claim_suggestion(cid, seq):
            return  # another process (or an earlier call) covers these segments
        stale = self._suggesting.pop(cid, None)
        if stale is not None and not stale.done():
            stale.cancel()  # superseded: its stream is closed, its output recorded
        task = self._tasks.spawn(self._generate("suggestion", uuid.uuid4().hex, consultation))
        self._suggesting[cid] = task
        task.add_done_callback(
            lambda t: self._suggesting.pop(cid, None) if self._suggesting.get(cid) is t else None
        )

    def _stop_suggestions(self, consultation_id: str) -> None:
        timer = self._timers.pop(consultation_id, None)
        if timer is not None:
            timer.cancel()
        task = self._suggesting.pop(consultation_id, None)
        if task is not None:
            task.cancel()

    # -- one generation -------------------------------------------------------------------

    async def _generate(
        self,
        kind: str,
        request_id: str,
        consultation: Consultation,
        question: str = "",
        reading: Reading | None = None,
    ) -> None:
        room = self._rooms.user(consultation.doctor_id)  # the doctor's devices, nobody else
        record: dict[str, Any] = {
            "_id": request_id,
            "consultation_id": consultation.consultation_id,
            "doctor_id": consultation.doctor_id,
            "kind": kind,
            "model": self._settings.model,
            "created_at": clock.now(),
            "ai_draft": kind == "note",
        }
        started = time.monotonic()
        try:
            await self._acquire()
            try:
                self.in_flight += 1
                if reading is None:
                    reading = Reading(
                        consultation,
                        await self._store.segments(
                            consultation.consultation_id, limit=TRANSCRIPT_LIMIT
                        ),
                    )
                try:
                    text = await self._stream(
                        kind, request_id, reading, question, room, record, started
                    )
                except _Stale:
                    record["restarted"] = True  # first_token_ms holds both attempts
                    text = await self._stream(
                        kind,
                        request_id,
                        await self._reread(consultation),
                        question,
                        room,
                        record,
                        started,
                    )
            finally:
                self.in_flight -= 1
                self._slots.release()
        except asyncio.CancelledError:
            self._metrics.llm_requests.labels(kind, "cancelled").inc()
            record.update(status="cancelled", total_ms=elapsed_ms(started))
            await self._finish(record, consultation)
            raise
        except AssistantFailed as exc:
            self._metrics.llm_requests.labels(kind, exc.code).inc()
            record.update(status="error", error=exc.code, total_ms=elapsed_ms(started))
            log.warning(
                "assistant %s request=%s consultation=%s failed: %s",
                kind,
                request_id,
                consultation.consultation_id,
                exc.code,
            )
            await self._finish(record, consultation)
            await self._sio.emit(
                Push.ASSISTANT_ERROR,
                {"request_id": request_id, "code": exc.code, "message": exc.message},
                to=room,
            )
            return
        self._metrics.llm_requests.labels(kind, "done").inc()
        record.update(status="done", text=text, total_ms=elapsed_ms(started))
        await self._finish(record, consultation)  # stored before it is shown as final
        final: dict[str, Any] = {
            "request_id": request_id,
            "text": text,
            "model": self._settings.model,
        }
        if kind == "answer":
            await self._sio.emit(Push.ASSISTANT_DONE, final, to=room)
        else:
            final.update(done=True, draft=kind == "note")
            await self._sio.emit(STREAM_EVENT[kind], final, to=room)

    async def _acquire(self) -> None:
        try:
            await asyncio.wait_for(self._slots.acquire(), self._settings.queue_wait)
        except TimeoutError:
            raise AssistantFailed("unavailable", "the assistant is busy, try again") from None

    async def _reread(self, consultation: Consultation) -> Reading:
        try:
            return Reading(
                *await self._consultations.as_doctor_with_transcript(
                    consultation.consultation_id, consultation.doctor_id
                )
            )
        except HubError as exc:
            raise AssistantFailed("unavailable", "the consultation could not be read") from exc

    async def _stream(
        self,
        kind: str,
        request_id: str,
        reading: Reading,
        question: str,
        room: str,
        record: dict[str, Any],
        started: float,
    ) -> str:
        """Stream one answer to ``room``; its text. Raises ``_Stale`` before showing
        anything when ``reading`` turns out not to be current: the stream is closed
        then, so the model server stops on it."""
        consultation, segments = reading.consultation, reading.segments
        prompt = prompts.build(
            kind,
            segments,
            summary=consultation.summary,
            summary_upto=consultation.summary_upto,
            question=question,
            num_ctx=self._settings.num_ctx,
            num_predict=self._settings.num_predict,
        )
        record.update(
            prompt_chars=prompt.chars,
            prompt_tokens_estimate=prompt.tokens,
            segments_verbatim_from=prompt.first_seq,
            segments_omitted=prompt.omitted,
        )
        event = STREAM_EVENT[kind]
        parts: list[str] = []
        # The model stream batches tokens: the first goes at once, later ones at most
        # every stream_interval, so a fast model costs a few emits a second. The request
        # goes out at the first read, in this task: no trip round the event loop between
        # the first token and its emit.
        chunks = await self._model.open(prompt.messages, self._settings.stream_interval)
        elsewhere = _DevicesElsewhere(self._presence, consultation.doctor_id, self._tasks)
        # The change token of a kept copy is read while the model server thinks: one
        # Redis round trip off the ask's path. On the benchmark's machine, waiting for
        # it first put p99 over the 10 ms target (docs/performance.md).
        current = self._tasks.spawn(reading.confirm()) if reading.confirm is not None else None
        summarize = prompt.needs_summary
        async with aclosing(chunks):
            async for chunk in chunks:
                if current is not None:
                    if not await current:
                        raise _Stale
                    current = None
                if chunk.model_wait_ms is not None:
                    record["first_token_ms"] = elapsed_ms(started)
                    # Waiting on the model server (and the network to it): the rest
                    # of first_token_ms is the hub's own doing.
                    record["model_wait_ms"] = chunk.model_wait_ms
                    self._metrics.llm_first_token_seconds.labels(kind).observe(
                        chunk.model_wait_ms / 1000
                    )
                if chunk.final is not None:
                    record.update(chunk.final)
                if chunk.text:
                    parts.append(chunk.text)
                    payload: dict[str, Any] = {"request_id": request_id, "text": chunk.text}
                    if kind != "answer":
                        payload["done"] = False
                    await self._sio.emit(
                        event, payload, to=room, ignore_queue=not await elsewhere.now()
                    )
                if summarize:  # after the first delta: it is not on the ask's path
                    summarize = False
                    self._tasks.spawn(self._summarize(consultation, segments))
        return "".join(parts)

    async def _summarize(self, consultation: Consultation, segments: list[dict[str, Any]]) -> None:
        """Fold all but the newest half of the transcript into the rolling summary."""
        fold = segments[: len(segments) // 2]
        if not fold:
            return
        prompt = prompts.build(
            "summary",
            fold,
            summary=consultation.summary,
            summary_upto=consultation.summary_upto,
            num_ctx=self._settings.num_ctx,
            num_predict=self._settings.num_predict,
        )
        try:
            await self._acquire()
            try:
                chunks = await self._model.open(prompt.messages, 1.0)
                async with aclosing(chunks):
                    parts = [chunk.text async for chunk in chunks]
            finally:
                self._slots.release()
        except AssistantFailed as exc:
            log.warning(
                "assistant summary of consultation=%s failed: %s",
                consultation.consultation_id,
                exc.code,
            )
            return
        await self._consultations.save_summary(
            consultation.consultation_id, "".join(parts), fold[-1]["seq"]
        )

    async def _finish(self, record: dict[str, Any], consultation: Consultation) -> None:
        try:
            await self._store.record_output(record)
            await self._store.audit(
                consultation.doctor_id,
                f"assistant.{record['kind']}",
                consultation.consultation_id,
                request_id=record["_id"],
                status=record["status"],
            )
        except HubError:
            log.error("assistant output %s could not be recorded", record["_id"])


class _DevicesElsewhere:
    """Whether a doctor has a device on another hub, as one stream sees it.

    The first look starts when the stream is made (while the model thinks) and the
    first ``now()`` waits for it; later ones run in the background, at most every
    ``DEVICES_RECHECK`` seconds, and ``now()`` answers with the last one meanwhile."""

    def __init__(self, presence: Presence, user_id: str, tasks: TaskGroup) -> None:
        self._presence = presence
        self._user_id = user_id
        self._tasks = tasks
        self._first: asyncio.Task[bool] | None = tasks.spawn(presence.elsewhere(user_id))
        self._answer = True
        self._looked_at = time.monotonic()
        self._looking = False

    async def now(self) -> bool:
        if self._first is not None:
            self._answer = await self._first
            self._first = None
        elif not self._looking and time.monotonic() - self._looked_at >= DEVICES_RECHECK:
            self._looking = True
            self._looked_at = time.monotonic()
            self._tasks.spawn(self._look_again())
        return self._answer

    async def _look_again(self) -> None:
        try:
            self._answer = await self._presence.elsewhere(self._user_id)
        finally:
            self._looking = False


class _Stale(Exception):
    """The reading a prompt was built from was not current; nothing was shown."""
