"""Hostile TCP against a live server: fuzzed frames, raw garbage, slow and half-open peers.
The server stays up, keeps serving a bystander, never raises, and frees what they held."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

from kiosk_sim.client import TerminalClient, network_request
from kiosk_sim.soak import fuzz_connection
from switch.iso8583 import Message
from switch.iso8583.response_codes import ResponseCode
from switch.responses import respond
from switch.server import ConnectionView
from tests.switch.conftest import running_switch

NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


async def approve(request: Message, _connection: ConnectionView) -> Message:
    return respond(request, ResponseCode.APPROVED)


async def test_fuzzed_connections_never_hurt_the_server_or_a_bystander() -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[object] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    async with running_switch(approve, frame_timeout_ms=300, idle_timeout_ms=2_000) as server:
        bystander = await TerminalClient.connect("127.0.0.1", server.port)
        rng = random.Random(5)
        fuzzers = [
            fuzz_connection(server.port, random.Random(rng.random()), 200) for _ in range(20)
        ]
        # Half-open peers: connect, send half a header or nothing, and never read.
        silent = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)]
        for _reader, writer in silent[:10]:
            writer.write(b"\x00")

        async def keep_echoing() -> int:
            answered = 0
            for i in range(30):
                echo = network_request("301", stan=f"{i + 1:06d}", now=NOW)
                answered += (await bystander.request(echo, timeout_ms=2_000)).response_code == "00"
                await asyncio.sleep(0.02)
            return answered

        results = await asyncio.gather(keep_echoing(), *fuzzers)
        assert results[0] == 30
        await asyncio.sleep(0.6)  # past the frame timeout: the half-sent headers are cut off
        assert server.stats().connections <= 1 + 10  # the bystander and the ten that sent nothing
        for _reader, writer in silent:
            writer.close()
        await bystander.close()
    assert unhandled == []
