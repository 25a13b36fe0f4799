"""The command line: ``python -m hub serve`` and ``python -m hub token``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import replace

from aiohttp import web

from hub import embedded, logs
from hub.app import create_app
from hub.auth import ROLES, issue_token
from hub.errors import ConfigError, HubError
from hub.settings import Settings

log = logging.getLogger("hub")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hub", description="The clinic's real-time hub.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the hub (configured by HUB_* environment variables)")
    token = commands.add_parser("token", help="print a JWT for development and demos")
    token.add_argument("--sub", required=True, help="the user id")
    token.add_argument("--role", required=True, choices=sorted(ROLES))
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (3600)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
        if args.command == "token":
            if args.ttl <= 0:
                parser.error("--ttl must be positive")
            settings = settings.with_embedded_jwt_secret()
            print(issue_token(settings, args.sub, args.role, args.ttl))
            return 0
        logs.configure(settings.log_level)
        return asyncio.run(serve(settings))
    except (ConfigError, ValueError) as exc:
        print(f"hub: configuration error: {exc}", file=sys.stderr)
        return 2
    except HubError as exc:
        print(f"hub: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def serve(settings: Settings) -> int:
    """Run until SIGINT or SIGTERM, then close the hub and stop the embedded servers."""
    children: list[embedded.ChildServer] = []
    runner: web.AppRunner | None = None
    try:
        if settings.embedded_mongodb:
            child = await asyncio.to_thread(embedded.start_mongodb, settings.data_dir / "mongodb")
            children.append(child)
            settings = replace(settings, mongodb_url=child.url)
            log.warning(
                "development setup: HUB_MONGODB_URL is unset, started an embedded "
                "MongoDB-compatible server (SecantusDB) at %s, data in %s",
                child.url, settings.data_dir / "mongodb",
            )
        if settings.embedded_redis:
            child = await asyncio.to_thread(embedded.start_redis, settings.data_dir / "redis")
            children.append(child)
            settings = replace(settings, redis_url=child.url)
            log.warning(
                "development setup: HUB_REDIS_URL is unset, started an embedded "
                "redis-server at %s, data in %s",
                child.url, settings.data_dir / "redis",
            )
        settings = settings.with_embedded_jwt_secret()
        runner = web.AppRunner(
            create_app(settings),
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,  # a dropped long-poll must not hold its handler
            shutdown_timeout=10.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("hub listening on http://%s:%d", settings.host, settings.port)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down")
        return 0
    finally:
        if runner is not None:
            await runner.cleanup()
        for child in reversed(children):
            await asyncio.to_thread(child.stop)
