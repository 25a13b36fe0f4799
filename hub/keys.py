"""Typed keys of the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from handlers.base import Router
from hub.services import Services

SERVICES = web.AppKey("services", Services)
ROUTER = web.AppKey("router", Router)
