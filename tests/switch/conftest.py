"""Loopback servers for the switch's integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from switch.iso8583 import Dialect
from switch.iso8583.message import Message
from switch.server import ConnectionView, Handler, SwitchServer
from switch.settings import ListenerSettings
from switch.signon import complete_sign_on

LISTENER = ListenerSettings(
    host="127.0.0.1",
    port=0,
    dialect=Dialect(),
    max_connections=2_000,
    max_in_flight_per_connection=16,
    max_frame_bytes=4_096,
    idle_timeout_ms=60_000,
    frame_timeout_ms=10_000,
    tls=None,
)


def signing_on(handler: Handler) -> Handler:
    """`handler` behind a sign-on that admits any terminal (the real one reads the ledger)."""

    async def handle(request: Message, connection: ConnectionView) -> Message | None:
        if request.mti == "0800" and request.network_code == "001":
            return complete_sign_on(request, connection, keys=None)
        return await handler(request, connection)

    return handle


@contextlib.asynccontextmanager
async def running_switch(
    handler: Handler, *, grace_ms: int = 2_000, **overrides: Any
) -> AsyncIterator[SwitchServer]:
    server = SwitchServer(replace(LISTENER, **overrides), signing_on(handler))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(grace_ms)
