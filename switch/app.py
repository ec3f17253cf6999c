"""Builds the running switch from settings and runs it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import resource
import signal
from collections.abc import Mapping
from datetime import UTC, datetime

import structlog
from aiohttp import web

from switch.admin import create_admin_app
from switch.iso8583.message import Message
from switch.monitor import Monitor
from switch.response_codes import ResponseCode
from switch.responses import respond
from switch.server import Link, SwitchServer
from switch.settings import Settings

log = structlog.get_logger("switch")


async def decline_unsupported(request: Message, _link: Link) -> Message:
    """Key change and financial messages are admitted by the session but not handled yet."""
    return respond(request, ResponseCode.INVALID_TRANSACTION)


def raise_open_file_limit() -> None:
    """Each terminal is a socket: let the process use every descriptor the system allows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def listener_ready() -> Mapping[str, bool]:
    return {"listener": True}


async def start_admin(settings: Settings, monitor: Monitor, server: SwitchServer) -> web.AppRunner:
    app = create_admin_app(
        token=settings.admin.token, monitor=monitor, stats=server.stats, readiness=listener_ready
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.admin.host, settings.admin.port).start()
    log.info("admin_listening", host=settings.admin.host, port=settings.admin.port)
    return runner


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    raise_open_file_limit()
    monitor = Monitor(lambda: datetime.now(UTC))
    server = SwitchServer(settings.listener, decline_unsupported, observer=monitor)
    await server.start()
    admin = await start_admin(settings, monitor, server) if settings.admin.enabled else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        log.info("shutdown_requested", grace_ms=settings.shutdown_grace_ms)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await server.shutdown(settings.shutdown_grace_ms)
        if admin is not None:
            await admin.cleanup()
