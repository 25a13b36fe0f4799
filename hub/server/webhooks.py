"""Twilio's webhooks: delivery status callbacks and inbound SMS (STOP, START, HELP).

Both check ``X-Twilio-Signature`` with twilio's ``RequestValidator`` against
``HUB_PUBLIC_URL`` + the path, the URL Twilio was given, so they work behind a proxy
that rewrites the host. A bad or missing signature, or a hub without a Twilio auth
token to check it with, gets 403. Inbound texts may hold health information: they
are matched against keywords and never logged.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from hub.core.errors import HubError
from hub.core.phone import E164, mask
from hub.core.sms_texts import help_text
from hub.server.appkeys import SERVICES
from hub.server.tenancy import clinic_in_url
from storage.sms import TWILIO_STATES

log = logging.getLogger("hub.webhooks")

STATUS_PATH = "/webhooks/twilio/status"
INBOUND_PATH = "/webhooks/twilio/inbound"
# Twilio's standard opt-out and opt-in keywords; they act on the whole message only.
STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
START_WORDS = {"START", "UNSTOP", "YES"}
HELP_WORDS = {"HELP", "INFO"}
# Plain requests ("please stop texting me", "unsubscribe me") also opt out: when in
# doubt, a clinic stops writing.
PLAIN_STOP = re.compile(
    r"\b(stop|unsubscribe|opt[\s-]?out|no more (texts|messages|sms))\b", re.IGNORECASE
)


async def _signed_form(request: web.Request) -> dict[str, str] | None:
    """The form parameters if Twilio signed them, else None."""
    settings = request.app[SERVICES].settings
    token = settings.sms.twilio_auth_token
    signature = request.headers.get("X-Twilio-Signature", "")
    form = {key: str(value) for key, value in (await request.post()).items()}
    if not token or not signature:
        return None
    url = settings.public_base_url + request.rel_url.path_qs
    return form if RequestValidator(token).validate(url, form, signature) else None


async def status(request: web.Request) -> web.Response:
    """Move the outbox row of ``MessageSid`` forward to ``MessageStatus``."""
    form = await _signed_form(request)
    if form is None:
        log.warning("twilio status callback refused: bad or missing signature")
        return web.Response(status=403, text="bad signature")
    sid, state = form.get("MessageSid", ""), form.get("MessageStatus", "")
    if not sid or state not in TWILIO_STATES:
        return web.Response(status=400, text="MessageSid and a known MessageStatus needed")
    services = clinic_in_url(request)  # Twilio signs the URL, ?tenant= included
    if services is None:
        return web.Response(status=404, text="no such clinic")
    try:
        moved = await services.sms_store.record_status(sid, state, form.get("ErrorCode") or None)
    except HubError:
        return web.Response(status=503, text="try again")  # Twilio retries callbacks
    log.info("sms status sid=%s state=%s applied=%s", sid, state, moved)
    outcome = {"delivered": "sms.delivered", "failed": "sms.failed", "undelivered": "sms.failed"}
    if moved and state in outcome:
        await services.webhooks.emit(
            outcome[state],
            f"{sid}:{state}",
            {"sid": sid, "state": state, "error_code": form.get("ErrorCode") or None},
        )
    return web.Response(status=204)


async def inbound(request: web.Request) -> web.Response:
    """STOP and plain "stop texting me" opt out, START opts in, HELP answers."""
    form = await _signed_form(request)
    if form is None:
        log.warning("twilio inbound sms refused: bad or missing signature")
        return web.Response(status=403, text="bad signature")
    services = clinic_in_url(request)  # Twilio signs the URL, ?tenant= included
    if services is None:
        return web.Response(status=404, text="no such clinic")
    phone = form.get("From", "")
    words = form.get("Body", "").strip()
    keyword = words.upper().strip(" .!")
    reply = MessagingResponse()
    if not E164.match(phone):
        return _twiml(reply)
    try:
        if keyword in STOP_WORDS:
            await services.sms_store.stop(phone, "keyword")
            action = "opt-out"  # Twilio confirms standard keywords itself
        elif keyword in START_WORDS:
            await services.sms_store.start(phone)
            action = "opt-in"
        elif keyword in HELP_WORDS:
            reply.message(help_text(services.settings.sms.clinic_name))
            action = "help"
        elif PLAIN_STOP.search(words):
            await services.sms_store.stop(phone, "plain request")
            reply.message(
                f"{services.settings.sms.clinic_name}: you will get no more SMS. "
                "Reply START to opt back in."
            )
            action = "opt-out"
        else:
            action = "none"
    except HubError:
        return web.Response(status=503, text="try again")
    log.info("inbound sms from=%s action=%s", mask(phone), action)
    return _twiml(reply)


def _twiml(reply: MessagingResponse) -> web.Response:
    return web.Response(text=str(reply), content_type="application/xml")


def setup(app: web.Application) -> None:
    app.router.add_post(STATUS_PATH, status)
    app.router.add_post(INBOUND_PATH, inbound)
