"""The SMS fallback, as the Celery tasks run it: decide, claim, send once, record.

Every run re-reads MongoDB first, so what the hub knew when it scheduled the task
does not matter: an acked notification, a read message, a STOP or a removed phone
number stop the SMS. One outbox document per cause (``notification:{id}`` or
``message:{conversation}:{user}:{seq}``) makes sending happen at most once however
often the task is delivered; a run that finds it ``sending`` (its worker died
mid-call) asks Twilio whether the SMS went out before trying again.

Decisions are returned as :class:`Outcome` values; the task layer turns ``retry``
and ``defer`` into Celery schedules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hub.core import clock, sms_texts
from hub.core.errors import SmsFailed
from hub.core.phone import is_test_number, mask
from hub.core.rooms import Rooms
from hub.core.settings import Settings
from hub.core.tasks import backoff
from hub.core.tenants import DEFAULT_TENANT
from storage.sms_outbox import SmsOutbox
from workers.twilio_sms import INVALID_NUMBER, UNSUBSCRIBED, Sent, SmsDriver

log = logging.getLogger("hub.sms")

SMS_PUSH = "notification:sms"
APPOINTMENT_KINDS = {"scheduled", "confirmed", "rescheduled", "cancelled"}
FINAL = {"queued", "sent", "delivered", "undelivered", "failed", "skipped"}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a run decided: ``sent``, ``skipped`` (with reason), ``done`` (already
    handled), ``failed``, ``defer`` (run again in ``delay`` s) or ``retry``."""

    action: str
    reason: str = ""
    delay: float = 0.0


class SmsSender:
    def __init__(
        self,
        settings: Settings,
        outbox: SmsOutbox,
        driver: SmsDriver,
        emit: Callable[[str, dict[str, Any], str], None] | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        self._settings = settings
        self._tenant = tenant  # the clinic: its rooms, and its name in the status callback
        self._rooms = Rooms(tenant)
        self._sms = settings.sms
        self._outbox = outbox
        self._driver = driver
        self._emit = emit
        self._lease = timedelta(seconds=settings.sms.twilio_timeout + 5)

    # -- causes --------------------------------------------------------------------------

    def notification(self, notification_id: str, attempt: int = 0) -> Outcome:
        """The fallback for an appointment notification not acked in time."""
        outbox_id = f"notification:{notification_id}"
        notification = self._outbox.notification(notification_id)
        if notification is None:
            return Outcome("skipped", "no such notification")
        user_id = notification["user_id"]
        kind = notification["type"].removeprefix("appointment.")
        row = self._open_row(outbox_id, user_id, kind, [notification_id])
        if row["state"] in FINAL:
            return Outcome("done", row["state"])
        if notification.get("read_at") is not None:
            return self._skip(outbox_id, "acked")
        if kind not in APPOINTMENT_KINDS:
            return self._skip(outbox_id, "no SMS for this kind")
        start = datetime.fromisoformat(notification["appointment"]["start"])
        return self._deliver(row, user_id, kind, start, attempt)

    def message(self, conversation_id: str, user_id: str, seq: int, attempt: int = 0) -> Outcome:
        """The "new message" SMS for a member who has not read up to ``seq``."""
        outbox_id = f"message:{conversation_id}:{user_id}:{seq}"
        read_seq = self._outbox.read_seq(conversation_id, user_id)
        row = self._open_row(outbox_id, user_id, "message", [conversation_id, user_id, seq])
        if row["state"] in FINAL:
            return Outcome("done", row["state"])
        if read_seq >= seq:
            return self._skip(outbox_id, "read")
        if not self._claim_window(conversation_id, user_id, outbox_id):
            return self._skip(outbox_id, "coalesced")
        return self._deliver(row, user_id, "message", None, attempt)

    def page(self, conversation_id: str, seq: int, user_id: str, attempt: int = 0) -> Outcome:
        """The on-call page of an urgent patient message: no quiet hours, no daily cap
        (the recipient chose to be on call), once per message and person."""
        outbox_id = f"page:{conversation_id}:{seq}:{user_id}"
        row = self._open_row(outbox_id, user_id, "page", [conversation_id, seq, user_id])
        if row["state"] in FINAL:
            return Outcome("done", row["state"])
        return self._deliver(row, user_id, "page", None, attempt, urgent=True)

    # -- the common path ----------------------------------------------------------------

    def _deliver(
        self,
        row: dict[str, Any],
        user_id: str,
        kind: str,
        start: datetime | None,
        attempt: int,
        *,
        urgent: bool = False,
    ) -> Outcome:
        outbox_id = row["_id"]
        contact = self._outbox.contact(user_id)
        phone = contact.get("phone")
        if not phone:
            return self._skip(outbox_id, "no phone")
        if not contact.get("sms_opt_in", False):
            return self._skip(outbox_id, "not opted in")
        if self._outbox.stopped(phone):
            return self._skip(outbox_id, "opted out")
        if contact.get("invalid_phone") == phone:
            return self._skip(outbox_id, "invalid number")
        if is_test_number(phone):
            return self._skip(outbox_id, "test number")
        zone = zone_of(contact.get("timezone"))
        now = clock.now()
        wait = 0.0 if urgent else quiet_wait(now.astimezone(zone), self._sms.quiet_hours)
        if wait > 0:
            until = now + timedelta(seconds=wait)
            self._outbox.defer(outbox_id, until)
            log.info("sms %s deferred by quiet hours until %s", outbox_id, until.isoformat())
            return Outcome("defer", "quiet hours", wait)
        body = sms_texts.render(
            kind,
            dict(self._sms.templates),
            self._sms.clinic_name,
            start.astimezone(zone) if start else None,
        )
        if row["state"] == "sending":
            found = self._reconcile(row, phone, body, now)
            if found is not None:
                return found
        elif not urgent and not self._take_daily_slot(outbox_id, user_id, now.astimezone(zone)):
            return self._skip(outbox_id, "daily cap")
        if not self._outbox.claim_sending(row, phone, mask(phone), now):
            return Outcome("done", "taken by another run")
        return self._send(outbox_id, user_id, phone, body, attempt)

    def _send(self, outbox_id: str, user_id: str, phone: str, body: str, attempt: int) -> Outcome:
        callback = self._settings.public_base_url + "/webhooks/twilio/status"
        if self._tenant != DEFAULT_TENANT:  # Twilio signs the URL, query included
            callback += f"?tenant={self._tenant}"
        try:
            sent = self._driver.send(phone, body, callback)
        except SmsFailed as exc:
            return self._failed(outbox_id, phone, exc, attempt)
        self._record_sent(outbox_id, user_id, sent)
        log.info(
            "sms %s sent to=%s sid=%s driver=%s",
            outbox_id,
            mask(phone),
            sent.sid,
            self._driver.name,
        )
        return Outcome("sent", sent.sid)

    def _failed(self, outbox_id: str, phone: str, exc: SmsFailed, attempt: int) -> Outcome:
        code = exc.twilio_code
        if exc.retryable and attempt < self._sms.max_retries:
            # Network errors leave the row "sending": the SMS may have gone out, and
            # the next run asks Twilio first. A refusal (429, 5xx) means it did not.
            if exc.status:
                self._outbox.refused(outbox_id, str(exc))
            else:
                self._outbox.note_error(outbox_id, str(exc))
            delay = backoff(self._sms.retry_base, attempt)
            log.warning(
                "sms %s to=%s failed (%s); retry %d in %.1fs",
                outbox_id,
                mask(phone),
                exc.message,
                attempt + 1,
                delay,
            )
            return Outcome("retry", exc.message, delay)
        if code == UNSUBSCRIBED:
            self._outbox.record_stop(phone, clock.now(), "twilio 21610")
        elif code == INVALID_NUMBER:
            self._outbox.mark_invalid(phone)
        self._outbox.fail(outbox_id, code, exc.message)
        log.warning("sms %s to=%s failed for good: %s", outbox_id, mask(phone), exc.message)
        return Outcome("failed", exc.message)

    def _reconcile(
        self, row: dict[str, Any], phone: str, body: str, now: datetime
    ) -> Outcome | None:
        """A run found the row ``sending``: did the SMS go out? None: send it now."""
        sending_at = row["sending_at"]  # aware: the client is tz_aware
        try:
            found = self._driver.find(phone, body, sending_at - timedelta(minutes=1))
        except SmsFailed as exc:
            return Outcome(
                "retry", f"could not check Twilio: {exc.message}", backoff(self._sms.retry_base, 0)
            )
        if found is not None:
            self._record_sent(row["_id"], row["user_id"], found)
            log.info(
                "sms %s had been sent before its worker stopped; sid=%s", row["_id"], found.sid
            )
            return Outcome("done", "sent before")
        if now - sending_at < self._lease:
            # Another worker may still be inside the call: wait out its timeout.
            return Outcome(
                "retry",
                "a send may be in flight",
                (self._lease - (now - sending_at)).total_seconds(),
            )
        return None

    def _record_sent(self, outbox_id: str, user_id: str, sent: Sent) -> None:
        state = sent.status if sent.status in FINAL else "queued"
        self._outbox.record_sent(outbox_id, state, sent.sid)
        if self._emit is not None:
            try:
                self._emit(SMS_PUSH, {"cause": outbox_id}, self._rooms.user(user_id))
            except Exception as exc:  # the SMS is out; a lost push only costs a badge
                log.warning("sms %s: push failed: %s", outbox_id, type(exc).__name__)

    # -- bookkeeping --------------------------------------------------------------------

    def _open_row(self, outbox_id: str, user_id: str, kind: str, args: list[Any]) -> dict[str, Any]:
        return self._outbox.open_row(outbox_id, user_id, kind, args, clock.now())

    def _skip(self, outbox_id: str, reason: str) -> Outcome:
        self._outbox.skip(outbox_id, reason)
        log.info("sms %s skipped: %s", outbox_id, reason)
        return Outcome("skipped", reason)

    def _claim_window(self, conversation_id: str, user_id: str, outbox_id: str) -> bool:
        return self._outbox.claim_window(
            conversation_id, user_id, outbox_id, clock.now(), self._sms.coalesce
        )

    def _take_daily_slot(self, outbox_id: str, user_id: str, local_now: datetime) -> bool:
        day = local_now.date().isoformat()  # the recipient's local day
        return self._outbox.take_daily_slot(user_id, day, outbox_id, self._sms.daily_cap)


def quiet_wait(local_now: datetime, quiet_hours: tuple[int, int]) -> float:
    """Seconds until quiet hours end, or 0 outside them (they may cross midnight)."""
    start, end = quiet_hours
    minute = local_now.hour * 60 + local_now.minute
    inside = (start <= minute < end) if start < end else (minute >= start or minute < end)
    if not inside or start == end:
        return 0.0
    end_at = local_now.replace(hour=end // 60, minute=end % 60, second=0, microsecond=0)
    if end_at <= local_now:
        end_at += timedelta(days=1)
    # In UTC: a subtraction within one zone is wall-clock time, wrong across a DST change.
    return (end_at.astimezone(UTC) - local_now.astimezone(UTC)).total_seconds()


def zone_of(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (KeyError, ValueError):
        return ZoneInfo("UTC")
