"""The command line: ``python -m hub serve``, ``worker``, ``demo``, ``token``, ``keys``,
``operator-keys``, ``clinics`` and ``push keys``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web

from hub.compat import asyncio as compat_asyncio
from hub.core import logs
from hub.core.auth import ROLES, issue_token
from hub.core.errors import ConfigError, HubError
from hub.core.settings import Settings, vapid_key_pair
from hub.core.tenants import DEFAULT_TENANT, TENANT_PATTERN
from hub.server import embedded, runtime
from hub.server.app import create_app, drain
from hub.server.operator_cli import manage_clinics, manage_keys

log = logging.getLogger("hub")

EMBEDDED_NAMES = {
    "mongodb": "MongoDB-compatible server (SecantusDB)",
    "redis": "redis-server",
    "worker": "Celery worker (SMS)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hub", description="The clinic's real-time hub.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the hub (configured by HUB_* environment variables)")
    commands.add_parser("worker", help="run a Celery worker of the SMS fallback")
    commands.add_parser(
        "demo",
        help="serve with a demo doctor, patient, conversation and "
        "appointment, and print how to open them",
    )
    token = commands.add_parser("token", help="print a JWT for development and demos")
    token.add_argument("--sub", required=True, help="the user id")
    token.add_argument("--role", required=True, choices=sorted(ROLES))
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (3600)")
    token.add_argument("--tenant", default=DEFAULT_TENANT, help="the clinic (default)")
    keys = commands.add_parser("keys", help="service API keys for clinic back-ends")
    keys.add_argument(
        "--tenant", default=DEFAULT_TENANT, help="the clinic the keys act for (default)"
    )
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("create", help="create a key and print it (shown once)").add_argument(
        "name"
    )
    key_actions.add_parser("revoke", help="revoke a key at once").add_argument("name")
    key_actions.add_parser("list", help="list keys (names and dates, never secrets)")
    operators = commands.add_parser(
        "operator-keys", help="the platform operators' keys (/api/v1/clinics)"
    )
    operator_actions = operators.add_subparsers(dest="action", required=True)
    operator_actions.add_parser(
        "create", help="create a key and print it (shown once)"
    ).add_argument("name")
    operator_actions.add_parser("revoke", help="revoke a key at once").add_argument("name")
    operator_actions.add_parser("list", help="list keys (names and dates, never secrets)")
    clinics = commands.add_parser("clinics", help="the platform's clinics, while the hubs run")
    clinic_actions = clinics.add_subparsers(dest="action", required=True)
    clinic_actions.add_parser("list", help="every clinic and its state")
    clinic_actions.add_parser("get", help="one clinic's settings and state").add_argument("id")
    put = clinic_actions.add_parser("put", help="create or replace a clinic")
    put.add_argument("id")
    put.add_argument(
        "settings", nargs="?", help='JSON: {"clinic_name": ..., "state": "suspended", ...}'
    )
    clinic_actions.add_parser(
        "remove", help="stop serving a clinic (its data is kept)"
    ).add_argument("id")
    push = commands.add_parser("push", help="push notifications")
    push.add_subparsers(dest="action", required=True).add_parser(
        "keys", help="print a new VAPID key pair for Web Push (make one, once)"
    )
    args = parser.parse_args(argv)

    if args.command == "push":
        private, public = vapid_key_pair()
        print(f"HUB_VAPID_PRIVATE_KEY={private}")
        print(f"# the public key, which the hub serves at /api/v1/push/vapid-public-key: {public}")
        return 0
    try:
        settings = Settings.from_env()
        if args.command == "token":
            if args.ttl <= 0:
                parser.error("--ttl must be positive")
            settings = settings.with_embedded_jwt_secret()
            if not TENANT_PATTERN.fullmatch(args.tenant):
                parser.error("--tenant: 1-32 lowercase letters, digits and -, first no -")
            print(issue_token(settings, args.sub, args.role, args.ttl, args.tenant))
            return 0
        if args.command == "keys":
            if not TENANT_PATTERN.fullmatch(args.tenant):
                parser.error("--tenant: 1-32 lowercase letters, digits and -, first no -")
            return asyncio.run(
                manage_keys(settings, args.action, getattr(args, "name", None), args.tenant)
            )
        if args.command == "operator-keys":
            name = getattr(args, "name", None)
            return asyncio.run(manage_keys(settings, args.action, name, operators=True))
        if args.command == "clinics":
            tenant_id, body = getattr(args, "id", None), getattr(args, "settings", None)
            return asyncio.run(manage_clinics(settings, args.action, tenant_id, body))
        logs.configure(settings.log_level, settings.log_format)
        if args.command == "worker":
            return run_worker(settings)
        compat_asyncio.backport_wait_for()
        with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
            return runner.run(serve(settings, demo=args.command == "demo"))
    except (ConfigError, ValueError) as exc:
        print(f"hub: configuration error: {exc}", file=sys.stderr)
        return 2
    except HubError as exc:
        print(f"hub: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop by default: the same asyncio API, with less time spent per socket event
    (see docs/performance.md). HUB_EVENT_LOOP=asyncio falls back to the standard loop."""
    if settings.event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("HUB_EVENT_LOOP=uvloop but uvloop is not installed: using asyncio's loop")
        return None
    return uvloop.new_event_loop


def _exit_now() -> None:
    log.error("shutdown took longer than HUB_SHUTDOWN_TIMEOUT: exiting now")
    logging.shutdown()
    os._exit(1)


async def listen(runner: web.AppRunner, settings: Settings) -> web.TCPSite:
    """Start accepting connections on ``HUB_HOST:HUB_PORT``, with an accept queue of
    ``HUB_LISTEN_BACKLOG``: a reconnect storm waits in it instead of being dropped."""
    site = web.TCPSite(runner, settings.host, settings.port, backlog=settings.listen_backlog)
    await site.start()
    return site


def run_worker(settings: Settings) -> int:
    """A Celery worker for the SMS tasks; needs HUB_MONGODB_URL and HUB_REDIS_URL."""
    missing = [
        name
        for name, value in (
            ("HUB_MONGODB_URL", settings.mongodb_url),
            ("HUB_REDIS_URL", settings.redis_url),
        )
        if not value
    ]
    if missing:
        raise ConfigError(f"hub worker needs {' and '.join(missing)}")
    from workers.celery_app import create_celery, register_tasks
    from workers.metrics import serve_metrics

    serve_metrics(settings)
    app = create_celery(settings)
    register_tasks(app, settings)
    if settings.sms.driver == "log":
        log.warning(
            "SMS: no Twilio credentials (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN): "
            "SMS are recorded and logged, nothing is really sent"
        )
    app.worker_main(
        [
            "worker",
            "--loglevel",
            settings.log_level,
            "--concurrency",
            str(settings.worker_concurrency),
            "--hostname",
            f"hub-sms@{socket.gethostname()}-{os.getpid()}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return 0


async def serve(settings: Settings, *, demo: bool = False) -> int:
    """Run until SIGINT or SIGTERM, then close the hub and stop the embedded servers.

    With ``demo``, seed the demo's people and data once the hub is up, and print how to
    open them."""
    children: list[embedded.ChildServer] = []
    runner: web.AppRunner | None = None
    try:
        if settings.embedded_mongodb:
            child = await asyncio.to_thread(embedded.start_mongodb, settings.data_dir / "mongodb")
            children.append(child)
            settings = replace(settings, mongodb_url=child.url)
            embedded.remember_mongodb(settings.data_dir, child.url)
            log.warning(
                "development setup: HUB_MONGODB_URL is unset, started an embedded "
                "MongoDB-compatible server (SecantusDB) at %s, data in %s",
                child.url,
                settings.data_dir / "mongodb",
            )
        if settings.embedded_redis:
            child = await asyncio.to_thread(embedded.start_redis, settings.data_dir / "redis")
            children.append(child)
            settings = replace(settings, redis_url=child.url)
            log.warning(
                "development setup: HUB_REDIS_URL is unset, started an embedded "
                "redis-server at %s, data in %s",
                child.url,
                settings.data_dir / "redis",
            )
        settings = settings.with_embedded_jwt_secret()
        if children:  # the development stack: run the SMS worker alongside
            worker = await asyncio.to_thread(embedded.start_worker, settings)
            children.append(worker)
            log.warning(
                "development setup: started a Celery worker for the SMS fallback, "
                "log in %s, metrics at %s",
                worker.log_path,
                worker.url,
            )
        runner = web.AppRunner(
            create_app(settings),
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,  # a dropped long-poll must not hold its handler
            shutdown_timeout=settings.shutdown_timeout / 2,
        )
        await runner.setup()
        site = await listen(runner, settings)
        if demo:
            from hub.server import demo as demo_module

            seeded = await demo_module.seed(runner.app)
            assistant = await demo_module.probe_ollama(settings)
            worker_metrics = next((c.url for c in children if c.name == "worker"), None)
            print(
                demo_module.banner(
                    settings,
                    seeded,
                    [EMBEDDED_NAMES[c.name] for c in children],
                    assistant,
                    worker_metrics,
                ),
                flush=True,
            )
        runtime.tune_gc()
        log.info(
            "hub listening on http://%s:%d (event loop: %s)",
            settings.host,
            settings.port,
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down within %.0f s (HUB_SHUTDOWN_TIMEOUT)", settings.shutdown_timeout)
        # Past the budget, whatever still hangs is abandoned: the process must go.
        loop.call_later(settings.shutdown_timeout, _exit_now)
        await drain(runner.app, site, settings.shutdown_timeout / 2)
        return 0
    finally:
        if runner is not None:
            await runner.cleanup()
        for child in reversed(children):
            await asyncio.to_thread(child.stop)
