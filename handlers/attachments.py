"""attachment:url: a short-lived download link for an ``<img>`` or a download button."""

from __future__ import annotations

from handlers.base import Ack, Call, Router
from hub.core.protocol import AttachmentUrl, Event, iso, ok


def register(router: Router) -> None:
    @router.on(Event.ATTACHMENT_URL, AttachmentUrl)
    async def attachment_url(call: Call, payload: AttachmentUrl) -> Ack:
        attachments = call.services.attachments
        # Checked now, so that a link is never handed out for what the user may not see.
        await attachments.downloadable(payload.attachment_id, call.user_id, payload.thumbnail)
        path, expires_at = attachments.sign(payload.attachment_id, call.user_id, payload.thumbnail)
        return ok(url=attachments.absolute(path), path=path, expires_at=iso(expires_at))
