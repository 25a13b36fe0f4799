"""push:register and push:unregister: the devices a push notification goes to."""

from __future__ import annotations

import logging

from handlers.base import Ack, Call, Router
from hub.core.errors import BadRequest, NotFound
from hub.core.protocol import Event, PushRegister, PushUnregister, ok
from hub.core.push_endpoints import check_endpoint, check_keys

log = logging.getLogger("hub.push")


def register(router: Router) -> None:
    @router.on(Event.PUSH_REGISTER, PushRegister)
    async def push_register(call: Call, payload: PushRegister) -> Ack:
        if payload.kind == "webpush":
            if payload.subscription is None:
                raise BadRequest("subscription: required for webpush")
            address = payload.subscription.endpoint
            keys = payload.subscription.keys.model_dump()
            check_keys(keys["p256dh"], keys["auth"])
            push = call.services.settings.push
            await check_endpoint(address, push.unchecked_origins, push.timeout)
            platform = "web"
        else:
            if payload.token is None or payload.platform not in ("android", "ios"):
                raise BadRequest("token and platform (android or ios): required for fcm")
            address, keys, platform = payload.token, None, payload.platform
        device, moved_from = await call.services.push_devices.register(
            call.user_id, payload.kind, address, platform, payload.locale, keys
        )
        if moved_from is not None:
            log.info("push device=%s moved from user=%s", device["_id"], moved_from)
        return ok(device={"id": device["_id"], "kind": payload.kind, "platform": platform})

    @router.on(Event.PUSH_UNREGISTER, PushUnregister)
    async def push_unregister(call: Call, payload: PushUnregister) -> Ack:
        if not await call.services.push_devices.unregister(call.user_id, payload.device_id):
            raise NotFound("no such device of yours")
        return ok()
