"""Loopback servers for the switch's integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from switch.iso8583 import Dialect
from switch.server import Handler, SwitchServer
from switch.settings import ListenerSettings

LISTENER = ListenerSettings(
    host="127.0.0.1",
    port=0,
    dialect=Dialect(),
    max_connections=2_000,
    max_in_flight_per_connection=16,
    max_frame_bytes=4_096,
    idle_timeout_ms=60_000,
    tls=None,
)


@contextlib.asynccontextmanager
async def running_switch(
    handler: Handler, *, grace_ms: int = 2_000, **overrides: Any
) -> AsyncIterator[SwitchServer]:
    server = SwitchServer(replace(LISTENER, **overrides), handler)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(grace_ms)
