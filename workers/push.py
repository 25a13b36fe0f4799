"""Push notifications, as the Celery tasks send them: decide, then each device once.

Every run re-reads MongoDB first: a notification acked or a message read since the
hub scheduled the push means no push. Quiet hours (``HUB_SMS_QUIET_HOURS``, in the
recipient's time zone) hold pushes as they hold SMS, unless the cause is urgent.
Each device gets its own outbox row, so a device served in a run that then failed on
another is not served twice when the task runs again. A device the service reports
gone is deleted.

What a push says comes from ``hub.core.push_texts`` and the ids of the cause: never
a message body, a note or a diagnosis.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from hub.core import clock, push_texts
from hub.core.settings import Settings
from hub.core.tasks import backoff
from storage.push_outbox import PushOutbox
from storage.sms_outbox import SmsOutbox
from workers.push_services import Push, PushFailed, PushService
from workers.sms import APPOINTMENT_KINDS, Outcome, quiet_wait, zone_of

log = logging.getLogger("hub.push")


class PushSender:
    def __init__(
        self,
        settings: Settings,
        outbox: PushOutbox,
        recipients: SmsOutbox,
        services: dict[str, PushService],
    ) -> None:
        self._settings = settings
        self._outbox = outbox
        self._recipients = recipients  # notifications, read cursors, contacts
        self._services = services  # by device kind: "webpush", "fcm"
        self._lease = timedelta(seconds=settings.push.timeout + 5)

    def notification(self, notification_id: str, attempt: int = 0) -> Outcome:
        notification = self._recipients.notification(notification_id)
        if notification is None:
            return Outcome("skipped", "no such notification")
        if notification.get("read_at") is not None:
            return Outcome("skipped", "acked")
        kind = notification["type"].removeprefix("appointment.")
        if kind not in APPOINTMENT_KINDS:
            return Outcome("skipped", "no push for this kind")
        user_id = notification["user_id"]
        zone = zone_of(self._recipients.contact(user_id).get("timezone"))
        start = datetime.fromisoformat(notification["appointment"]["start"]).astimezone(zone)
        appointment_id = notification["appointment"]["id"]
        text = push_texts.render(kind, self._settings.sms.clinic_name, start)
        data = {
            "type": "appointment",
            "appointment_id": appointment_id,
            "notification_id": notification_id,
        }
        return self._deliver(
            f"notification:{notification_id}",
            user_id,
            text,
            f"appointment:{appointment_id}",
            data,
            attempt,
            urgent=bool(notification.get("urgent")),
        )

    def message(self, conversation_id: str, user_id: str, seq: int, attempt: int = 0) -> Outcome:
        if self._recipients.read_seq(conversation_id, user_id) >= seq:
            return Outcome("skipped", "read")
        text = push_texts.render("message", self._settings.sms.clinic_name)
        data = {"type": "message", "conversation_id": conversation_id, "seq": str(seq)}
        return self._deliver(
            f"message:{conversation_id}:{user_id}:{seq}",
            user_id,
            text,
            f"conversation:{conversation_id}",
            data,
            attempt,
        )

    def _deliver(
        self,
        cause: str,
        user_id: str,
        text: push_texts.PushText,
        collapse_key: str,
        data: dict[str, str],
        attempt: int,
        *,
        urgent: bool = False,  # set by the triage inbox (a later release)
    ) -> Outcome:
        devices = [d for d in self._outbox.devices(user_id) if d["kind"] in self._services]
        if not devices:
            return Outcome("skipped", "no device")
        now = clock.now()
        if not urgent:
            zone = zone_of(self._recipients.contact(user_id).get("timezone"))
            wait = quiet_wait(now.astimezone(zone), self._settings.sms.quiet_hours)
            if wait > 0:
                until = now + timedelta(seconds=wait)
                for device in devices:
                    outbox_id = f"push:{cause}:{device['_id']}"
                    self._outbox.open_row(
                        outbox_id, user_id, device["_id"], device["platform"], now
                    )
                    self._outbox.defer(outbox_id, until)
                log.info("push %s deferred by quiet hours until %s", cause, until.isoformat())
                return Outcome("defer", "quiet hours", wait)
        push = Push(
            title=text.title,
            body=text.body,
            collapse_key=collapse_key,
            badge=self._outbox.unread_count(user_id),
            data=data,
        )
        outcomes = [self._to_device(cause, user_id, device, push, now) for device in devices]
        if "busy" in outcomes:
            # Another run is inside its request: after its timeout, this one settles it.
            return Outcome("defer", "a push may be in flight", self._lease.total_seconds())
        retry = outcomes.count("retry")
        if retry and attempt < self._settings.sms.max_retries:
            delay = backoff(self._settings.sms.retry_base, attempt)
            return Outcome("retry", f"{retry} devices to try again", delay)
        sent = outcomes.count("sent")
        return Outcome("sent" if sent else "done", f"{sent} of {len(devices)} devices")

    def _to_device(
        self, cause: str, user_id: str, device: dict[str, Any], push: Push, now: datetime
    ) -> str:
        outbox_id = f"push:{cause}:{device['_id']}"
        row = self._outbox.open_row(outbox_id, user_id, device["_id"], device["platform"], now)
        if row.get("state") not in ("pending", "deferred", "sending"):
            return "done"
        claim = self._outbox.claim_sending(outbox_id, now, self._lease)
        if claim == "unknown":
            log.warning("push %s: a run stopped mid-request; not sent again", outbox_id)
            return "done"
        if claim == "busy":
            return "busy"
        try:
            self._services[device["kind"]].send(device, push)
        except PushFailed as exc:
            return self._failed(outbox_id, device, exc)
        except Exception as exc:
            # Anything else (a stored key the encryption refuses, a library's bug): this
            # device's row fails with the error's type, the person's other devices go on.
            error = type(exc).__name__
            self._outbox.settle(outbox_id, "failed", f"error: {error}", error_type=error)
            log.warning("push %s failed for good: unexpected %s", outbox_id, error)
            return "failed"
        self._outbox.settle(outbox_id, "sent")
        log.info("push %s sent platform=%s", outbox_id, device["platform"])
        return "sent"

    def _failed(self, outbox_id: str, device: dict[str, Any], exc: PushFailed) -> str:
        """What the push service's refusal means for this device's row."""
        if exc.gone:
            self._outbox.delete_device(device["_id"])
            self._outbox.settle(outbox_id, "gone", exc.message)
            log.info("push %s: device gone, deleted (%s)", outbox_id, exc.message)
            return "gone"
        if exc.retryable:
            self._outbox.release(outbox_id, exc.message)
            log.warning("push %s failed (%s): tried again", outbox_id, exc.message)
            return "retry"
        self._outbox.settle(outbox_id, "failed", exc.message)
        log.warning("push %s failed for good: %s", outbox_id, exc.message)
        return "failed"
