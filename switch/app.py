"""Builds the running switch from settings and runs it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import resource
import signal

import structlog

from switch.iso8583.message import Message
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


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    raise_open_file_limit()
    server = SwitchServer(settings.listener, decline_unsupported)
    await server.start()
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
