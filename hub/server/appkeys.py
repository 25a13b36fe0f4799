"""Typed keys of the aiohttp application."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from channels.appointments import ChannelListener, StreamConsumer
from handlers.base import Router
from handlers.services import Services
from hub.server.control import ControlBus

if TYPE_CHECKING:  # it reads the keys below
    from hub.server.clinics import ClinicSet

SERVICES = web.AppKey("services", Services)  # the `default` clinic's
# Every clinic's, built on first use (a ClinicSet).
TENANTS: web.AppKey[Mapping[str, Services]] = web.AppKey("tenants")
ROUTER = web.AppKey("router", Router)
CONTROL = web.AppKey("control", ControlBus)  # revocations and changes, to every hub


@dataclass(slots=True)
class Listeners:
    """The appointment event listeners of this process, each for every clinic (their
    liveness feeds /health/ready)."""

    stream: StreamConsumer
    channel: ChannelListener


LISTENERS = web.AppKey("listeners", Listeners)
CLINICS: web.AppKey[ClinicSet] = web.AppKey("clinics")  # started and stopped as the registry says
